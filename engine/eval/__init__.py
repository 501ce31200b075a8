"""The evaluations behind python -m engine.perplexity, engine.lambada and engine.sweep.

One responsibility a module; the arrows between them run one way (tests/test_import_graph.py):

    options         the eviction command-line options, the policy and budget checks, open_model, EXIT_HELP
    report          statistics of a run (exp_mean, running perplexity), progress bars, the printed tables
    shared_prefill  one prefill shared by several eviction configurations (the prefix schedule)
    protocols       perplexity: the prefix and streaming chunk runners (perplexity, perplexity_many)
    lambada         LAMBADA last-word accuracy and perplexity (lambada, lambada_many)
    command         the command line of python -m engine.perplexity and engine.lambada
    sweep           python -m engine.sweep: every (dataset, policy, budget), resumable, tables and plots

options, report and shared_prefill import no other module of engine.eval; protocols and lambada
import those three; command and sweep import the protocols and lambada. engine.perplexity,
engine.lambada and engine.sweep are thin entry modules over these. This file imports nothing, so
importing one module does not load the others.
"""
