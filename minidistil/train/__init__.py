"""Training: the run's folder and schedule, distillation, fine-tuning, corpora and task data, masking,
data parallelism, evaluation, metrics, QA windows and decoding. Import only io and below.
"""
