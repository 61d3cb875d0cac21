"""On-demand profiling with yappi (wall clock, coroutine-aware) and its report."""
