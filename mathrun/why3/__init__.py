"""Why3's VC server: the line protocol on a unix socket, provers in the sandbox."""
