"""The "Get models…" dialog: Qt glue over ``catalog.py`` (table, progress bar, buttons).

Downloads run in the worker process (``catalog.Download``), polled by a timer; closing the dialog
does not stop a download, which ends on its own, atomically. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

import qt
import slicer
from slicer.i18n import tr as _

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerModuleLib import catalog as catalogLib


class GetModelsDialog:
    """``GetModelsDialog(logic.workerPython, logic._start, onChanged=widget.refreshModels).show()``."""

    def __init__(self, workerPython: Callable[[], str], startWorker, onChanged: Callable[[], None] | None = None,
                 parent=None):
        self._workerPython, self._startWorker, self._onChanged = workerPython, startWorker, onChanged
        self.rows: list[catalogLib.CatalogRow] = []
        self.catalogUrl = ""
        self.download: catalogLib.Download | None = None

        self.dialog = qt.QDialog(parent)
        self.dialog.setWindowTitle(_("Get models"))
        layout = qt.QVBoxLayout(self.dialog)
        self.sourceLabel = qt.QLabel()
        self.sourceLabel.setWordWrap(True)
        layout.addWidget(self.sourceLabel)
        self.table = qt.QTableWidget()
        self.table.setColumnCount(len(catalogLib.COLUMNS))
        self.table.setHorizontalHeaderLabels([_(c) for c in catalogLib.COLUMNS])
        self.table.cellClicked.connect(lambda row, column: self._updateButtons())
        layout.addWidget(self.table)
        self.progressBar = qt.QProgressBar()
        layout.addWidget(self.progressBar)
        self.statusLabel = qt.QLabel()
        self.statusLabel.setWordWrap(True)
        layout.addWidget(self.statusLabel)
        buttons = qt.QHBoxLayout()
        self.downloadButton = qt.QPushButton(_("Download"))
        self.cancelButton = qt.QPushButton(_("Cancel download"))
        self.deleteButton = qt.QPushButton(_("Delete"))
        self.closeButton = qt.QPushButton(_("Close"))
        for button, slot in ((self.downloadButton, self.onDownload), (self.cancelButton, self.onCancel),
                             (self.deleteButton, self.onDelete), (self.closeButton, self.dialog.close)):
            button.clicked.connect(slot)
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.poll)
        self.refresh()

    def show(self):
        self.dialog.show()

    # ---- table

    def refresh(self):
        """Re-read the catalogue and what is installed."""
        try:
            found, self.rows = catalogLib.catalog_rows()
        except UserError as exc:
            self.rows, self.catalogUrl = [], ""
            self.sourceLabel.setText(_("The model catalogue could not be read."))
            self.statusLabel.setText(str(exc))
        else:
            self.catalogUrl = found.url
            self.sourceLabel.setText(_("Catalogue {url} (version {version}). Demo models are not for clinical use; "
                                       "check each model's licence and status.").format(url=found.url,
                                                                                        version=found.version))
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            for c, text in enumerate(row.cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(row.tooltip)
                self.table.setItem(r, c, item)
        self._updateButtons()

    def selectedRow(self) -> catalogLib.CatalogRow | None:
        index = self.table.currentRow()
        return self.rows[index] if 0 <= index < len(self.rows) else None

    def _updateButtons(self):
        row, running = self.selectedRow(), self.download is not None
        self.downloadButton.enabled = not running and row is not None and row.can_download
        self.deleteButton.enabled = not running and row is not None and row.can_delete
        self.cancelButton.enabled = running

    # ---- actions

    def onDownload(self):
        row = self.selectedRow()
        if row is None or self.download is not None:
            return
        if row.needs_overwrite and not slicer.util.confirmOkCancelDisplay(
                _("A different model file named {name} is installed ({path}). Replace it with the catalogue's "
                  "version {version}?").format(name=row.entry.name, path=row.path, version=row.entry.version)):
            return
        try:
            self.download = catalogLib.Download(row.entry.name, self._startWorker, self._workerPython(),
                                                self.catalogUrl, overwrite=row.needs_overwrite)
        except (OSError, RuntimeError) as exc:   # no PythonSlicer, the worker could not start
            self.statusLabel.setText(str(exc))
            return
        self.progressBar.setValue(0)
        self.statusLabel.setText(_("Downloading {name}…").format(name=row.entry.name))
        self.timer.start()
        self._updateButtons()

    def poll(self):
        download = self.download
        if download is None:
            return
        finished = download.poll()
        self.progressBar.setValue(download.tracker.percent)
        self.progressBar.setFormat(download.tracker.bar_format)
        self.statusLabel.setText(download.message)
        if finished:
            self.timer.stop()
            self.download = None
            self.refresh()
            if download.result.succeeded and self._onChanged:
                self._onChanged()

    def onCancel(self):
        if self.download is not None:
            self.statusLabel.setText(_("Cancelling…"))
            self.download.cancel()   # returns at once; poll() reports the end

    def onDelete(self):
        row = self.selectedRow()
        if row is None or not row.can_delete or not slicer.util.confirmOkCancelDisplay(
                _("Delete the model {name} ({path})?").format(name=row.entry.name, path=row.path)):
            return
        try:
            path = catalogLib.catalog.delete(row.entry.name)
        except UserError as exc:
            self.statusLabel.setText(str(exc))
            return
        self.statusLabel.setText(_("Deleted {path}.").format(path=path))
        self.refresh()
        if self._onChanged:
            self._onChanged()
