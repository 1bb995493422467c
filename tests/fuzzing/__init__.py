"""The fuzz harness of issue 15: seeded mutants of small valid models (structure and bytes) driven
through `trtc parse`, `run`, `optimize` and `build`, each outcome classified ok / refused / crash.

    seeds.py    the valid models mutated
    mutate.py   the mutators, one small named function per class of damage
    driver.py   mutants, the CLI stages, the verdicts, a campaign's tally
    server.py   the fork server that runs CLI calls without paying start-up each time

`python tests/fuzzing --base mlp --seed 7` writes that mutant and runs it as a user would.
"""
