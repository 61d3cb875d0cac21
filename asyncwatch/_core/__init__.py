"""What every subsystem shares, and the only thing they share: settings, metric names,
fault counting, findings, stack reading, measuring instruments, patching helpers and the
``Point`` shape figures are exported in. Nothing here imports a subsystem or the Watch.
"""
