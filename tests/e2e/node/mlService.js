// Copied verbatim from the older service's README (Backend Integration Guide, step 2):
// the Node.js client its users run, exercised against this daemon by tests/e2e/test_api_live.py.
const axios = require("axios");
const FormData = require("form-data");
const fs = require("fs");

class MLService {
  constructor() {
    this.baseURL = process.env.ML_SERVER_URL;
    this.apiKey = process.env.ML_API_KEY;
    this.timeout = parseInt(process.env.ML_SERVER_TIMEOUT) || 300000;
  }

  async analyzeVideo(videoPath, options = {}) {
    const {
    model = "siglip-lstm-v3",
    analysisType = "analyze", // 'analyze', 'detailed', 'frames', 'visualize'
    outputPath = null,
    } = options;

    try {
    const formData = new FormData();
    formData.append("video", fs.createReadStream(videoPath));

    const config = {
      method: "POST",
      url: `${this.baseURL}/${analysisType}?model=${model}`,
      headers: {
        "X-API-Key": this.apiKey,
        ...formData.getHeaders(),
      },
      data: formData,
      timeout: this.timeout,
      responseType: analysisType === "visualize" ? "stream" : "json",
    };

    const response = await axios(config);

    if (analysisType === "visualize" && outputPath) {
      const writer = fs.createWriteStream(outputPath);
      response.data.pipe(writer);
      return new Promise((resolve, reject) => {
        writer.on("finish", () =>
        resolve({
          success: true,
          outputPath,
        })
        );
        writer.on("error", reject);
      });
    }

    return {
      success: true,
      data: response.data,
      model: model,
      processingTime: response.data.processing_time,
    };
    } catch (error) {
    console.error("ML Service Error:", error.message);
    return {
      success: false,
      error: error.message,
      status: error.response?.status || 500,
    };
    }
  }

  async checkHealth() {
    try {
    const response = await axios.get(`${this.baseURL}/health`, {
      headers: { "X-API-Key": this.apiKey },
      timeout: 10000,
    });
    return { success: true, data: response.data };
    } catch (error) {
    return { success: false, error: error.message };
    }
  }

  async getAvailableModels() {
    try {
    const response = await axios.get(`${this.baseURL}/`, {
      headers: { "X-API-Key": this.apiKey },
    });
    return {
      success: true,
      models: response.data.available_models || [],
    };
    } catch (error) {
    return { success: false, error: error.message };
    }
  }
}

module.exports = new MLService();
