"""Habla reader, audio archive, ledger, Label Studio client, push / pull, active-learning selection."""
