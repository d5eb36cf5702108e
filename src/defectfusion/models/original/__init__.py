"""Checkpoints and YAML configs of the original DEIMv2 code (Intellindust-AI-Lab/DEIMv2).

``config`` reads its YAML (``__include__`` chains), ``architecture`` (with ``backbone``,
``encoder``, ``decoder``) decides the transformers architecture it describes, ``keys`` maps its
tensor names, ``convert`` reads a checkpoint and builds the equivalent detector.
"""
