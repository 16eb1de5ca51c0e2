"""Memory release and resume: the controller (state machine) and its backends."""
