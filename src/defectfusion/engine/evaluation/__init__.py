"""Evaluation: COCO metrics of detections, validation during training, results files, the exact image
bootstrap.
"""
