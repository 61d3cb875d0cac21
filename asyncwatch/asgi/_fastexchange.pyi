# The compiled twin of _pureexchange.py (see _fastexchange.c); same names, same behaviour.
from ._pureexchange import HttpCore as HttpCore
from ._pureexchange import bind as bind
from ._pureexchange import new_http as new_http
