"""Framework glue: each module tells the core who the user is, nothing else."""
