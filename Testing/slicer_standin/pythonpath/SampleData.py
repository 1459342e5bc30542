"""Stand-in for the Sample Data module: registered sources, loaded from file URIs with checksums.

The registration function has the signature of the Slicer release the stand-in plays
(``SLICER_STANDIN_VERSION``, default 5.10.0): before 5.8 it takes ``loadFileType`` only.
"""

import hashlib
import logging
import os
from urllib.parse import unquote, urlparse

import slicer


class SampleDataSource:
    def __init__(self, sampleName=None, sampleDescription=None, uris=None, fileNames=None, nodeNames=None,
                 checksums=None, loadFiles=None, customDownloader=None, thumbnailFileName=None,
                 loadFileTypes=None, loadFileProperties=None):
        self.sampleName, self.uris, self.fileNames, self.nodeNames = sampleName, uris, fileNames, nodeNames
        self.checksums, self.thumbnailFileName, self.loadFileTypes = checksums, thumbnailFileName, loadFileTypes


def computeChecksum(algo, filePath):
    digest = hashlib.new(algo)
    with open(filePath, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SampleDataLogic:
    _sources = {}  # category -> [SampleDataSource]

    if tuple(int(v) for v in os.environ.get("SLICER_STANDIN_VERSION", "5.10.0").split(".")[:2]) >= (5, 8):
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                           loadFileTypes=None, loadFiles=None, loadFileProperties=None,
                                           checksums=None, loadFileType=None):
            types = loadFileTypes or ([loadFileType] * len(uris) if loadFileType else None)
            SampleDataLogic._register(category, SampleDataSource(
                sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames, checksums=checksums,
                thumbnailFileName=thumbnailFileName, loadFileTypes=types))
    else:
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                           loadFileType="VolumeFile", loadFiles=None, loadFileProperties=None,
                                           checksums=None):
            SampleDataLogic._register(category, SampleDataSource(
                sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames, checksums=checksums,
                thumbnailFileName=thumbnailFileName, loadFileTypes=[loadFileType] * len(uris)))

    @staticmethod
    def _register(category, source):
        if len(source.uris) != len(source.fileNames) or len(source.uris) != len(source.nodeNames):
            raise ValueError("uris, fileNames and nodeNames must have the same length")
        SampleDataLogic._sources.setdefault(category, []).append(source)

    @staticmethod
    def sourceForSampleName(sampleName):
        return next((s for sources in SampleDataLogic._sources.values() for s in sources
                     if s.sampleName == sampleName), None)

    def downloadSamples(self, sampleName):
        source = self.sourceForSampleName(sampleName)
        if source is None:
            return []
        nodes = []
        for i, uri in enumerate(source.uris):
            path = unquote(urlparse(uri).path)
            if source.checksums:
                algo, digest = source.checksums[i].split(":", 1)
                if computeChecksum(algo.lower(), path) != digest.lower():
                    logging.error("Checksum mismatch for %s", path)
                    return []
            if source.loadFileTypes[i] != "VolumeFile":
                raise ValueError(f"the stand-in loads VolumeFile only, not {source.loadFileTypes[i]}")
            nodes.append(slicer.util.loadVolume(path, {"name": source.nodeNames[i]}))
        return nodes


def downloadSamples(sampleName):
    return SampleDataLogic().downloadSamples(sampleName)


def downloadSample(sampleName):
    nodes = downloadSamples(sampleName)
    return nodes[0] if nodes else None
