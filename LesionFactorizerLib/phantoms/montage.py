"""PNG previews of a phantom case: axial slices of each contrast with label contours."""

from __future__ import annotations

import numpy as np

_COLOURS = {1: "#ff3030", 2: "#30ff30", 3: "#ffd700"}


def save_montage(case, path: str, n_slices: int = 4) -> None:
    """Rows = contrasts, columns = axial slices through the lesion (or the brain if none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = case.label
    per_slice = label.reshape(label.shape[0], -1).astype(bool).sum(1)
    first = next(iter(case.images.values()))
    zs = np.nonzero(first.reshape(first.shape[0], -1).any(1))[0]
    picks = np.linspace(zs.min(), zs.max(), n_slices + 2)[1:-1].round().astype(int)
    if per_slice.any():  # the slices with most lesion, spread out, plus brain context
        best = [int(z) for z in np.argsort(-per_slice, kind="stable") if per_slice[z] > 0]
        chosen: list[int] = []
        for z in best:
            if all(abs(z - c) >= 4 for c in chosen):
                chosen.append(z)
            if len(chosen) == n_slices - 1:
                break
        picks = np.array(chosen + [int(p) for p in picks if all(abs(p - c) >= 8 for c in chosen)][: n_slices - len(chosen)])
    picks = np.sort(picks)
    names = list(case.images)
    sp = case.geometry["spacing"]
    aspect = sp[1] / sp[0]
    fig, axes = plt.subplots(len(names), len(picks), figsize=(2.6 * len(picks), 2.6 * len(names) * aspect), squeeze=False)
    for i, name in enumerate(names):
        img = case.images[name].astype(np.float32)
        nz = img[img > 0]
        hi = np.percentile(nz, 99.5) if nz.size else 1.0
        for j, z in enumerate(picks):
            ax = axes[i, j]
            # Radiological display: patient's right on the image left, anterior up (LPS axes).
            ax.imshow(img[z][::-1, ::-1], cmap="gray", vmin=0, vmax=hi, origin="upper", aspect=aspect, interpolation="nearest")
            for k, colour in _COLOURS.items():
                m = (label[z] == k)[::-1, ::-1]
                if m.any():
                    ax.contour(m, levels=[0.5], colors=colour, linewidths=0.6)
            ax.set_axis_off()
            if j == 0:
                ax.set_title(name, fontsize=8, loc="left")
    fig.subplots_adjust(wspace=0.02, hspace=0.08, left=0.01, right=0.99, top=0.96, bottom=0.01)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)
