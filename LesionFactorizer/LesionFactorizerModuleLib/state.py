"""The reference roles of the module's parameter node (the parameters themselves are named where the
panel writes and reads them, ``panelstate.py``), so that a saved scene reopens as it was shown.

MRML writes node references as ``role:id;`` without escaping the role and reads them back by
cutting at the first ':' (vtkMRMLNode::ParseReferencesAttribute), so a role must hold no ':', ';'
or whitespace; parameter values are strings (``"True"``/``"False"`` for check boxes).
"""

from __future__ import annotations

OUTPUT_ROLE = "outputSegmentation"


def check_role(role: str) -> str:
    """``role`` if MRML reads it back as written; ValueError otherwise."""
    if not role or any(c in role for c in ":; \t\n{}"):
        raise ValueError(f"node reference role {role!r} does not survive a scene save: MRML splits roles at "
                         f"':' and ';' and IDs at whitespace")
    return role


def input_role(input_name: str) -> str:
    """The reference role of a task input (``input_flair``)."""
    return check_role(f"input_{input_name}")
