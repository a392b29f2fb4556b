// Drives the older service's Node.js client (mlService.js, unchanged) the way its backend did,
// and prints what each call returned as one JSON object.
// Usage: ML_SERVER_URL=... ML_API_KEY=... node client.js <video>
const mlService = require("./mlService");

async function main() {
  const video = process.argv[2];
  const out = {};
  out.health = await mlService.checkHealth();
  out.models = await mlService.getAvailableModels();
  // The client's defaults: model siglip-lstm-v3, quick analysis.
  out.analyze = await mlService.analyzeVideo(video);
  out.detailed = await mlService.analyzeVideo(video, {
    model: "color-cues-lstm-v1",
    analysisType: "analyze/detailed",
  });
  out.frames = await mlService.analyzeVideo(video, {
    model: "color-cues-lstm-v1",
    analysisType: "analyze/frames",
  });
  out.unknownModel = await mlService.analyzeVideo(video, { model: "invalid-model" });
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
