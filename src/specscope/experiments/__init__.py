"""The built-in studies, each a client of the public API exactly like a user's own script.

One module per study: :mod:`.sosd` (SPEC 5.1), :mod:`.lifecycle` and :mod:`.pruning` (5.2-5.4),
:mod:`.grokking` (5.5), :mod:`.lens` (5.6), :mod:`.taxonomy` (5.7), :mod:`.sweep` (batch tiers x
learning rates by :mod:`.halving`, successive halving), :mod:`.toy` (generated toy tasks, 5.8).
``specscope experiment NAME`` runs them; nothing is imported here.
"""
