"""Maxima over HTTP, goemaxima-compatible: a warm SBCL mother process forks
one child per request, each switched to a job user and fed through named
pipes."""
