"""Device discipline of the post-processor, the prediction path and the collators, without a GPU.

A tensor that a step creates follows its inputs' device: model outputs on the GPU with sizes
from the CPU must not meet in one operation (CUDA refuses it). Here the GPU is the pretend
accelerator of ``tests/accelerator.py``: real values on the CPU, device ``meta``, CUDA's device
rules applied to every operation. Each test also checks the numbers equal the CPU run's, so the
code ran on the pretend device rather than being skipped.
"""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.data.transforms import DetectionCollator, FeatureCollator
from defectfusion.models.detector import add_fusion, build_detector
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.inference import InputSpec, normalize, postprocess_sizes
from defectfusion.models.postprocess import postprocess, query_boxes_in_pixels, top_k_queries
from tests.accelerator import DEVICE, OnDevice, on_cpu, pretend_accelerator
from tests.helpers import SIX_CLASSES


def _outputs(seed: int = 0, batch: int = 2, queries: int = 12, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=generator)
    boxes = torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.25
    return logits, boxes


def _same(a, b) -> None:
    for name in ("boxes", "scores", "labels"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_the_pretend_accelerator_refuses_what_cuda_refuses_and_lets_through_what_it_allows():
    """The trick itself: a CPU tensor of one or more dimensions beside a device tensor raises (in a
    kernel the meta device checks and in one it cannot run, ``equal``); CPU scalars and CPU
    indexes pass, as on CUDA; the values are the CPU's."""
    with pretend_accelerator() as mode:
        x = torch.arange(4.0).to(DEVICE)
        assert isinstance(x, OnDevice) and x.device == DEVICE
        with pytest.raises(RuntimeError, match="not on the expected device meta"):
            x * torch.ones(4)
        with pytest.raises(RuntimeError, match="CPU tensor of shape"):
            torch.equal(x, torch.arange(4.0))  # data-dependent: meta cannot run it
        y = (x * torch.tensor(2.0))[torch.tensor([1, 3])] + torch.zeros(2, device=x.device)
        assert isinstance(y, OnDevice) and y.cpu().tolist() == [2.0, 6.0] and y.sum().item() == 8.0
        assert type(y.cpu()) is torch.Tensor and y.new_tensor([1.0]).device == DEVICE
    assert mode.ran_on_meta > 0


def test_postprocess_puts_cpu_sizes_on_the_outputs_device():
    """Model outputs on the GPU, image sizes from the data loader on the CPU (what
    ``benchmarks/gpu_smoke.py`` passes): the boxes are scaled on the outputs' device.

    Before the fix, ``query_boxes_in_pixels`` cast the sizes to the boxes' dtype but left them on
    the CPU, and this test failed with "Tensor on device cpu is not on the expected device meta"
    (the CUDA run's "Expected all tensors to be on the same device").
    """
    logits, boxes = _outputs()
    sizes = torch.tensor([[96, 128], [40, 24]])
    expected = postprocess(logits, boxes, sizes, top_k=10)
    with pretend_accelerator():
        _, _, queries = top_k_queries(logits.to(DEVICE), 10)
        pixels = query_boxes_in_pixels(boxes.to(DEVICE), queries, sizes)
        assert pixels.device == DEVICE
        found = postprocess(logits.to(DEVICE), boxes.to(DEVICE), sizes, top_k=10)
        assert all(d.boxes.device == DEVICE for d in found)
        found = [d.to("cpu") for d in found]
    for got, want in zip(found, expected, strict=True):
        _same(got, want)


def test_postprocess_follows_the_boxes_dtype():
    """float64 outputs are scaled in float64 (integer sizes take the boxes' dtype), bfloat16 ones in bfloat16."""
    _, boxes = _outputs()
    queries = torch.tensor([[0, 3], [5, 1]])
    sizes = torch.tensor([[96, 128], [40, 24]])
    assert query_boxes_in_pixels(boxes.double(), queries, sizes).dtype == torch.float64
    assert query_boxes_in_pixels(boxes.bfloat16(), queries, sizes).dtype == torch.bfloat16


@pytest.mark.parametrize("resize", ["plain", "letterbox"])
def test_postprocess_sizes_stay_on_the_device_of_the_sizes_given(resize):
    sizes = torch.tensor([[90, 120], [64, 64]])
    with pretend_accelerator():
        out = postprocess_sizes(sizes.to(DEVICE), InputSpec((96, 96), resize=resize))
        assert out.device == DEVICE and out.dtype == torch.int64
        out = out.cpu()
    assert out.tolist() == (sizes.tolist() if resize == "plain" else [[96, 96], [96, 96]])


def test_normalize_and_the_collators_follow_the_images_device():
    """The collators and ``normalize`` run wherever their images are (GPU-side augmentation, a
    cached trunk's features on the GPU): their constants follow the images."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8, generator=generator)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def sample(i: int, image):
        boxes = tv_tensors.BoundingBoxes(torch.tensor([[4.0, 6.0, 20.0, 30.0]]), format="XYXY", canvas_size=(32, 48))
        return image, {"boxes": boxes, "labels": torch.tensor([i]), "image_id": 7 + i, "orig_size": (32, 48)}

    expected = DetectionCollator(mean, std)([sample(i, im) for i, im in enumerate(images)])
    features = [torch.rand(2, 4, 4, generator=generator) for _ in range(2)]
    targets = [sample(i, im)[1] for i, im in enumerate(images)]
    with pretend_accelerator():
        pixels = normalize(images.to(DEVICE), mean, std)
        batch = DetectionCollator(mean, std)([sample(i, im.to(DEVICE)) for i, im in enumerate(images)])
        cached = FeatureCollator()([([f.to(DEVICE)], t) for f, t in zip(features, targets, strict=True)])
        assert pixels.device == batch["pixel_values"].device == cached["trunk_features"][0].device == DEVICE
        pixels, batch, cached = on_cpu((pixels, batch, cached))
    torch.testing.assert_close(pixels, expected["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(cached["trunk_features"][0], torch.stack(features))
    assert batch["orig_sizes"].tolist() == expected["orig_sizes"].tolist() == [[32, 48], [32, 48]]


@pytest.fixture(scope="module")
def fused_model():
    torch.manual_seed(0)
    base = build_detector(ModelConfig(preset="hgnetv2_micro", image_size=(96, 96)), SIX_CLASSES)
    return add_fusion(base, FusionConfig(query_selection=True), random_text_embeddings(6, 16, seed=1)).eval()


@pytest.mark.parametrize("resize", ["plain", "letterbox"])
def test_predict_with_the_model_on_the_accelerator_gives_the_cpu_detections(fused_model, resize, one_thread):
    """``model.predict`` (inference.py: preprocess on the CPU, forward and top-k on the device,
    detections brought back) on the pretend device: the CPU's detections, nothing mixed."""
    import copy

    model = copy.deepcopy(fused_model)
    model.meta.resize = resize
    generator = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in ((80, 120), (96, 64))
    ]
    expected = model.predict(images, threshold=0.2, nms_iou=0.5)
    with pretend_accelerator() as mode:
        model.to(DEVICE)
        found = model.predict(images, threshold=0.2, nms_iou=0.5)
    assert mode.ran_on_meta > 1000  # the forward pass ran on the pretend device
    assert [len(d.scores) for d in found] == [len(d.scores) for d in expected]
    for got, want in zip(found, expected, strict=True):
        assert got.boxes.device.type == "cpu"
        torch.testing.assert_close(got.boxes, want.boxes)
        torch.testing.assert_close(got.scores, want.scores)
        assert torch.equal(got.labels, want.labels)
