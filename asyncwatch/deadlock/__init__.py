"""Deadlock and stuck-task detection over the await graph and lock waits: the cycle probe,
the sliced scans, and the findings they report.
"""
