"""Deviceless planning: compile a job's programs for a TPU slice or GPU nodes on this machine and report their cost."""
