// Stand-in for js-ipfs's optional WebRTC modules (wrtc, electron-webrtc). js-ipfs loads them
// inside try/catch and only enables WebRTC when the import succeeds, so failing here keeps
// the node exactly as if the optional dependency were absent.
throw new Error("evops: WebRTC support is intentionally not installed");
