"""Stages C-D: a template and a passage -> an instruction-answer pair (the instantiator role,
excerpts), judged (the judge role); the non-instructional continuations."""
