"""Synthetic brain-lesion phantoms on real anatomy (MNI ICBM152 2009a, shipped with nilearn).

``generate_case(task, seed, index)`` returns images + labels in memory; ``write_dataset`` writes a
data set in the task's public layout (BraTS 2021, ISLES'22 BIDS, MSSEG-2). Used for tests, the
bundled sample cases, demo-model training and by users to stress-test pipelines. Needs numpy,
scipy, SimpleITK and nilearn (for the template files only); never torch.
"""

from LesionFactorizerLib.phantoms.dataset import write_dataset
from LesionFactorizerLib.phantoms.generate import CHANNELS, LABELS, TASKS, PhantomCase, generate_case
from LesionFactorizerLib.phantoms.layouts import case_files, case_id

__all__ = ["CHANNELS", "LABELS", "TASKS", "PhantomCase", "case_files", "case_id", "generate_case", "write_dataset"]
