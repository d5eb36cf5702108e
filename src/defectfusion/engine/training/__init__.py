"""Training: the progressive run, one phase's trainer and what it needs (loss, schedule, EMA,
precision, the frozen-trunk cache, gates, interrupts, distributed helpers, tracking).
"""
