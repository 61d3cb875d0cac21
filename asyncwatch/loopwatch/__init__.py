"""Blocked-loop detection: the heartbeat, the watchdog thread that names the culprit while
the loop is held, precise mode, GIL-holding C calls (faulthandler) and garbage collections.
"""
