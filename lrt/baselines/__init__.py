"""Methods LRT is compared with, in the same harness (same backbone, tasks, graders, tables)."""
