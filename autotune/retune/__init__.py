"""Scheduled retuning: cycles, drift, history, schedules."""
