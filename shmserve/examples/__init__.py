"""Runnable examples shipped with shmserve (`python -m shmserve.examples.quickstart`)."""
