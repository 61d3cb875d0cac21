# The compiled twin of _purepath.py (tasks/_fastpath.c): same classes, same fields.
from ._purepath import HookCore as HookCore
from ._purepath import StatsCore as StatsCore
