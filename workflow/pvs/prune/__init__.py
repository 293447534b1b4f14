"""Pruning methods of the study; see registry.py for the list and how to add one."""
