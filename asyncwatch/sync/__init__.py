"""asyncio's locks, semaphores, events, conditions and queues, observed: who holds, who
waits and where each was made. The deadlock detector and the advisor read the same state.
"""

from ._state import STATE_ATTR, PrimitiveState, state_of
from ._tracker import PrimitiveTracker

__all__ = ["STATE_ATTR", "PrimitiveState", "PrimitiveTracker", "state_of"]
