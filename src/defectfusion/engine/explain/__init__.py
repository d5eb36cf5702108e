"""Explanations: attribution maps, their quality against the boxes and a detections-only control, the
deletion test, and the text-usage (manipulation) check.
"""
