"""Thin Ray-job entrypoints: ``ray job submit --working-dir . -- python -m pipelines.<name> ...``."""
