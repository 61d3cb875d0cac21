"""The advisor: measures executors, concurrency limits, batches, queues, gates and the
loop's load, and turns them into worker-count, limit and batch-size changes.

Its public face: the ``Advisor`` the Watch builds, the ``Recommendation`` it returns, and
the ``Concurrency`` and ``Gate`` objects behind ``asyncwatch.concurrency()`` and
``asyncwatch.gate()``. These are the modules the Watch loads anyway when it starts; the
executor probe (``_executors``) and psutil stay loaded on first use.

Inside: ``_advisor`` gathers the figures (probes, sampler thread, ``advise()``); the models
decide, as pure functions: ``_pool_model`` (executors' ``max_workers``), ``_limit_model``
(concurrency limits), ``_batch_model`` (batch sizes), ``_loop_model`` (processes), on the
shared ``_recommendation`` and the fits in ``_fit``.
"""

from ._advisor import Advisor
from ._gates import Gate
from ._limits import Concurrency
from ._recommendation import Recommendation

__all__ = ["Advisor", "Concurrency", "Gate", "Recommendation"]
