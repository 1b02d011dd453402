"""The built-in studies, each a client of the public API exactly like a user's own script.

One module per study: :mod:`.grokking` (SPEC 5.5), :mod:`.sosd` (5.1), :mod:`.lifecycle` and
:mod:`.pruning` (5.3-5.4), :mod:`.lens` and :mod:`.taxonomy` (5.2), :mod:`.sweep` (batch tiers x
learning rates by :mod:`.halving`, successive halving), :mod:`.toy` (generated toy tasks).
``specscope experiment NAME`` runs them; nothing is imported here.
"""
