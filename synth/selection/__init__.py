"""Stage 1, choosing exemplars (`synth select`): the rules (:mod:`~synth.selection.rules`), the
streaming scans of a source (:mod:`~synth.selection.scanning`), the list as a file
(:mod:`~synth.selection.exemplar_list`) and the seeded background pool sample
(:mod:`~synth.selection.background_pool`)."""
