"""`remoe profile`: this machine's speeds measured through the real parts (experts, functions, the cluster),
for the scheduler's cost model (remoe/scheduler/profile_file.py holds the result)."""
