"""Raising the open-file limit at start-up, so many sockets do not run out of descriptors.

A relay holding ten thousand agent connections needs one descriptor per socket (plus the
store's files); the usual soft limit is 1,024. ``raise_nofile`` lifts the soft limit of
``RLIMIT_NOFILE`` towards the hard limit (never above ``want``) and never lowers it. Where
the platform has no ``resource`` module (Windows) it does nothing.
"""

from __future__ import annotations

try:
    import resource
except ImportError:  # Windows: descriptors are not limited this way
    resource = None  # type: ignore[assignment]

DEFAULT_WANT = 1 << 20


def raise_nofile(want: int = DEFAULT_WANT) -> tuple[int, int]:
    """Lift the soft open-file limit to ``min(want, hard)``; returns (soft, hard) after.

    (-1, -1) where there is no such limit to raise. Failures leave the limit as it was.
    """
    if resource is None:
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, hard
        soft = target
    return soft, hard
