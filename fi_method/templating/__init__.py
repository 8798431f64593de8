"""Stage A: real user queries -> instruction templates (the genericizer role, its rules engine, the
template format)."""
