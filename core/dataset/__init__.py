"""The dataset workshop: preprocess, tag, edit captions, lay out kohya folders, check before training.

Pure file and image work, usable from a test, the UI (ui/dataset/), the API and the terminal
(``python -m core.dataset``). Nothing here knows Gradio. Two rules hold in every module:
originals are never overwritten (a destination is never the source), and a caption file is
only ever replaced atomically after its previous text was backed up.
"""
