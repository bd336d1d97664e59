"""Source adapters: one per kind of local system, behind one small interface."""
