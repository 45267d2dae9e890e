// The demo page's tracking: the real Snowplow browser tracker with the media plugin, wired to an
// HTML5 <video> and to simulated ad breaks (like the original accelerator's tracker app).
import { newTracker, setUserId } from "@snowplow/browser-tracker";
import {
  SnowplowMediaPlugin, startMediaTracking, updateMediaTracking, endMediaTracking,
  trackMediaReady, trackMediaPlay, trackMediaPause, trackMediaEnd, trackMediaSeekStart,
  trackMediaSeekEnd, trackMediaVolumeChange, trackMediaPlaybackRateChange,
  trackMediaFullscreenChange, trackMediaBufferStart, trackMediaBufferEnd,
  trackMediaAdBreakStart, trackMediaAdBreakEnd, trackMediaAdStart, trackMediaAdFirstQuartile,
  trackMediaAdMidpoint, trackMediaAdThirdQuartile, trackMediaAdComplete, trackMediaAdSkip,
  trackMediaAdClick,
} from "@snowplow/browser-plugin-media";

const params = new URLSearchParams(location.search);
const collector = params.get("collector") || `${location.protocol}//${location.hostname}:9090`;
const video = document.getElementById("video");
const adBox = document.getElementById("ad");
const adText = document.getElementById("ad-text");
const skipButton = document.getElementById("skip");
const clickButton = document.getElementById("click");
const TITLE = video.dataset.title;
// Ad breaks at these content positions (seconds), each with one 6-second skippable ad.
const AD_BREAKS = (params.get("ads") || "8,18").split(",").filter(Boolean).map(Number);
const AD_SECONDS = Number(params.get("adSeconds") || 6);

const tracker = newTracker("sp", collector, {
  appId: "weir-live-viewer-demo",
  platform: "web",
  eventMethod: "post",
  bufferSize: 1,
  contexts: { webPage: true },
  plugins: [SnowplowMediaPlugin()],
});
if (params.get("user")) setUserId(params.get("user"));

const id = "demo-" + Math.random().toString(36).slice(2);
const player = () => ({
  currentTime: video.currentTime,
  duration: isFinite(video.duration) ? video.duration : null,
  ended: video.ended,
  paused: video.paused,
  muted: video.muted,
  volume: Math.round(video.volume * 100),
  playbackRate: video.playbackRate,
  fullscreen: document.fullscreenElement === video,
  label: TITLE,
  mediaType: "video",
  playerType: "html5",
  quality: `${video.videoWidth}x${video.videoHeight}`,
});

let inAd = false;        // the content is paused by an ad break: not a viewer pause
let breaksDone = 0;
let started = false;

function start() {
  if (started) return;
  started = true;
  startMediaTracking({ id, player: player(), boundaries: [25, 50, 75], pings: { pingInterval: 5 } });
  trackMediaReady({ id, player: player() });
}

video.addEventListener("loadedmetadata", start);
video.addEventListener("play", () => { start(); if (!inAd) trackMediaPlay({ id, player: player() }); });
video.addEventListener("pause", () => { if (!inAd && !video.ended) trackMediaPause({ id, player: player() }); });
video.addEventListener("seeking", () => trackMediaSeekStart({ id, player: player() }));
video.addEventListener("seeked", () => trackMediaSeekEnd({ id, player: player() }));
video.addEventListener("volumechange", () => trackMediaVolumeChange({ id, player: player(), newVolume: Math.round(video.volume * 100) }));
video.addEventListener("ratechange", () => trackMediaPlaybackRateChange({ id, player: player(), newRate: video.playbackRate }));
video.addEventListener("waiting", () => trackMediaBufferStart({ id, player: player() }));
video.addEventListener("playing", () => trackMediaBufferEnd({ id, player: player() }));
document.addEventListener("fullscreenchange", () => trackMediaFullscreenChange({ id, player: player(), fullscreen: document.fullscreenElement === video }));
video.addEventListener("ended", () => { trackMediaEnd({ id, player: player() }); endMediaTracking({ id }); started = false; });
video.addEventListener("timeupdate", () => {
  if (!started) return;
  updateMediaTracking({ id, player: player() });
  if (!inAd && breaksDone < AD_BREAKS.length && video.currentTime >= AD_BREAKS[breaksDone]) adBreak();
});

// A simulated linear ad break: the content pauses, a countdown plays, quartiles fire, the viewer
// may skip (after 2 s) or click.
function adBreak() {
  const n = ++breaksDone;
  inAd = true;
  video.pause();
  const adBreakInfo = { breakId: "break-" + n, name: `Mid-roll ${n}`, breakType: "linear", podSize: 1 };
  const ad = { adId: "ad-" + n, name: n % 2 ? "Sneakers, now 20% off" : "Fresh coffee, delivered", creativeId: "creative-" + n, duration: AD_SECONDS, skippable: true, podPosition: 1 };
  trackMediaAdBreakStart({ id, player: player(), adBreak: adBreakInfo });
  trackMediaAdStart({ id, player: player(), ad });
  adBox.hidden = false;
  skipButton.disabled = true;
  let elapsed = 0;
  let quartiles = 0;
  const finish = (how) => {
    clearInterval(timer);
    if (how === "skip") trackMediaAdSkip({ id, player: player(), percentProgress: Math.round(100 * elapsed / AD_SECONDS) });
    else trackMediaAdComplete({ id, player: player() });
    trackMediaAdBreakEnd({ id, player: player() });
    adBox.hidden = true;
    inAd = false;
    video.play();
  };
  const tick = () => {
    elapsed += 0.25;
    adText.textContent = `${ad.name} — ${Math.max(0, Math.ceil(AD_SECONDS - elapsed))} s`;
    if (elapsed >= 2) skipButton.disabled = false;
    const q = Math.floor((4 * elapsed) / AD_SECONDS);
    while (quartiles < Math.min(q, 3)) {
      quartiles++;
      [trackMediaAdFirstQuartile, trackMediaAdMidpoint, trackMediaAdThirdQuartile][quartiles - 1]({ id, player: player() });
    }
    if (elapsed >= AD_SECONDS) finish("complete");
  };
  const timer = setInterval(tick, 250);
  tick();
  skipButton.onclick = () => finish("skip");
  clickButton.onclick = () => trackMediaAdClick({ id, player: player(), percentProgress: Math.round(100 * elapsed / AD_SECONDS) });
}

// For tests and the curious: who this viewer is.
window.weirDemo = {
  domainUserId: () => tracker.getDomainUserId(),
  skipAd: () => skipButton.click(),
  clickAd: () => clickButton.click(),
  inAd: () => inAd,
};
