"""The LesionFactorizer Slicer module's parts, in two kinds.

Torch-free, Slicer-free helpers, which pytest exercises on real files and real processes without
Slicer: building the worker command line and running the worker (worker, progress, outputs),
report rows (report, results), input auto-assignment and messages (inputs), terminology strings,
component-map reading (components), the dependency check (dependencies), model cards (models),
the model catalogue's rows and downloads (catalog),
sample-data discovery (samples), the lesion navigator's decisions (navigator) and the parameter
names and reference roles (state). None of these imports slicer, qt, torch or MONAI.

Slicer-side parts, imported only by the module file and mixed into its logic and widget: jobs,
sceneimport, sceneexport, installer, lesionview, componentview, resultsview, panelstate and
catalog_dialog ("Get models…"). They
import slicer/qt (never torch).
"""
