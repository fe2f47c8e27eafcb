"""AUTOMATIC1111's generation scripts, for every face: X/Y/Z plot, prompt matrix, prompts from a
file or textbox, SD upscale.

A script turns one generation (a `Spec`) into many and composes what they make (grids, a tiled
image). It never loads models or writes files itself: the face that runs it (the CLI, the A1111
API) gives it a `Face` that generates a Spec, resolves names and reports progress
(opensd.scripts.spec), so every face runs the same script code.
"""
