// Build the labelmap that OHIF v3 would build from a DICOM SEG, without a browser.
//
// OHIF 3.13 loads a SEG through @cornerstonejs/adapters 5.6.8
// (createLabelmapsFromSegImageIds); createFromDICOMSegBuffer is the same code
// fed from a file.  This script registers the source images with a metadata
// provider shaped like OHIF's, runs the adapter, and prints one JSON document
// on stdout describing where every labelmap voxel landed, so that the Python
// tests can compare it with the mask the SEG was made from.
//
// usage: node seg_check.mjs SEG.dcm SOURCE.dcm [SOURCE.dcm ...]
//   The sources form the viewer's stack in the order given.
//
// Output: {segments, images, overlapping, warnings, adapterMs}
//   images: one entry per source, in stack order, with its SOP Instance UID,
//   Instance Number, the count of voxels per segment number, and (when any
//   voxel is set) the labelmap itself as base64 of rows*columns bytes.

import fs from 'node:fs';
import dcmjs from 'dcmjs';
import * as csCore from '@cornerstonejs/core';
import { adaptersSEG } from '@cornerstonejs/adapters';

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

function readDataset(path) {
  const bytes = fs.readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  return { buffer, dataset: DicomMetaDictionary.naturalizeDataset(DicomMessage.readFile(buffer).dict) };
}

const numbers = (value) => (value === undefined ? undefined : [].concat(value).map(Number));

// The modules OHIF's MetadataProvider derives from an instance.  Like OHIF,
// an image without orientation/position (a radiograph) gets the identity
// orientation and the origin, and an image without PixelSpacing gets 1 mm.
function modulesFor(ds) {
  const orientation = numbers(ds.ImageOrientationPatient) ?? [1, 0, 0, 0, 1, 0];
  const position = numbers(ds.ImagePositionPatient) ?? [0, 0, 0];
  const spacing = numbers(ds.PixelSpacing) ?? [1, 1];
  return {
    instance: ds,
    generalImageModule: { sopInstanceUID: ds.SOPInstanceUID, instanceNumber: Number(ds.InstanceNumber) },
    generalSeriesModule: { seriesInstanceUID: ds.SeriesInstanceUID, modality: ds.Modality },
    imagePlaneModule: {
      frameOfReferenceUID: ds.FrameOfReferenceUID,
      rows: ds.Rows,
      columns: ds.Columns,
      imageOrientationPatient: orientation,
      rowCosines: orientation.slice(0, 3),
      columnCosines: orientation.slice(3, 6),
      imagePositionPatient: position,
      pixelSpacing: spacing,
      rowPixelSpacing: spacing[0],
      columnPixelSpacing: spacing[1],
    },
    imagePixelModule: {
      rows: ds.Rows,
      columns: ds.Columns,
      bitsAllocated: ds.BitsAllocated,
      bitsStored: ds.BitsStored,
      highBit: ds.HighBit,
      pixelRepresentation: ds.PixelRepresentation,
      samplesPerPixel: ds.SamplesPerPixel ?? 1,
      photometricInterpretation: ds.PhotometricInterpretation,
    },
  };
}

function describeLabelmap(image, store) {
  const pixels = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
  const counts = {};
  let nonzero = 0;
  for (const value of pixels) {
    if (value) {
      counts[value] = (counts[value] ?? 0) + 1;
      nonzero += 1;
    }
  }
  const source = store.get(image.referencedImageId).generalImageModule;
  return {
    sopInstanceUID: source.sopInstanceUID,
    instanceNumber: source.instanceNumber,
    nonzero,
    counts,
    mask: nonzero ? Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength).toString('base64') : null,
  };
}

async function main() {
  const [segPath, ...sourcePaths] = process.argv.slice(2);
  if (!segPath || sourcePaths.length === 0) {
    throw new Error('usage: node seg_check.mjs SEG.dcm SOURCE.dcm [SOURCE.dcm ...]');
  }
  const store = new Map();
  const imageIds = sourcePaths.map((path, index) => {
    const imageId = `dicomfile:${index}`;
    store.set(imageId, modulesFor(readDataset(path).dataset));
    return imageId;
  });
  csCore.metaData.addProvider((type, imageId) => store.get(imageId)?.[type], 10000);

  const warnings = [];
  console.warn = (...parts) => warnings.push(parts.join(' '));

  const started = performance.now();
  const result = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(
    imageIds, readDataset(segPath).buffer, { metadataProvider: csCore.metaData, tolerance: 0.001 });
  const adapterMs = performance.now() - started;

  // Several labelmap groups only when segments overlap; each group has one image per source.
  const images = result.labelMapImages.map((group) => group.map((image) => describeLabelmap(image, store)));
  const segments = Object.entries(result.segMetadata.data)
    .filter(([, segment]) => segment)
    .map(([number, segment]) => ({ number: Number(number), label: segment.SegmentLabel }));
  process.stdout.write(JSON.stringify({
    segments, images: images[0], groups: images.length, overlapping: result.overlappingSegments, warnings, adapterMs,
  }));
}

main().catch((error) => {
  process.stderr.write(`seg_check failed: ${error?.stack ?? error}\n`);
  process.exit(1);
});
