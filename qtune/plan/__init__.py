"""``qtune plan``: a recipe's peak memory, what fits and the time per step, from its model's config alone.

shape (the model on the meta device) → memory (the breakdown) → fit (largest micro batch / sequence
length) and throughput (time per step) → report (text, JSON, the verdict ``train`` prints);
measure runs two real steps to check them.
"""
