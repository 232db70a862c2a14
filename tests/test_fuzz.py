"""The fuzz suite: mutated documents and random edits, every one answered by a graph or a typed error.

Counts go to the session's ``fuzz_tally`` (printed at the end of the run). Under ``CI=1`` the seed
is fixed (a landing never depends on luck); elsewhere each run draws a new one, named in every
failure so that it can be replayed: ``python tests/fuzz_documents.py 5000 SEED`` (or
``fuzz_edits.py``). A case is too slow when it takes over 1 s of its thread's CPU time (wall time on a shared
machine also counts other processes; a case blocked for 30 s of wall time is counted too).
"""

import os
import random

import fuzz_documents
import fuzz_edits

SEED = 0 if os.environ.get("CI") else random.SystemRandom().randrange(2**31)
DOCUMENTS = 5_000
EDITS = 5_000


def _tally(fuzz_tally, **counts):
    for key, n in counts.items():
        fuzz_tally[key.replace("_", " ")] = fuzz_tally.get(key.replace("_", " "), 0) + n


def test_mutated_documents_get_a_graph_or_a_typed_error(fuzz_tally):
    found = fuzz_documents.run(DOCUMENTS, SEED)
    _tally(fuzz_tally, documents=found.documents, untyped_errors=len(found.untyped), cases_over_1_s=len(found.slow))
    assert found.documents >= 5_000
    assert not found.untyped, (f"seed {SEED}", found.untyped[:5])
    assert not found.slow, (f"seed {SEED}", found.slow[:5])
    # every kind of mutation ran, and some mutations are still valid documents (a value in range)
    assert set(found.kinds) == {"tree", "tree-json", "tree-yaml", "repeated-keys", "yaml-tags", "bytes"}
    assert found.accepted > 0


def test_random_edits_get_a_valid_graph_or_a_typed_error(fuzz_tally):
    """Every public edit with random and ill-typed arguments on random graphs: an accepted edit
    gives a graph that lowers and runs (a sample, on the meta device), a refused one a typed
    error, and neither changes the graph it was called on."""
    found = fuzz_edits.run(EDITS, SEED, lower_every=25)
    _tally(fuzz_tally, edits=found.edits, untyped_errors=len(found.untyped), cases_over_1_s=len(found.slow))
    _tally(fuzz_tally, edits_lowered_and_run=found.lowered)
    assert found.edits >= 5_000
    assert not found.untyped, (f"seed {SEED}", found.untyped[:5])
    assert not found.slow, (f"seed {SEED}", [(what, took) for what, took, _ in found.slow[:5]])
    assert not found.changed, (f"seed {SEED}", found.changed[:5])
    assert not found.unlowerable, (f"seed {SEED}", found.unlowerable[:2])
    assert found.accepted > 1_000 and found.lowered >= 40
