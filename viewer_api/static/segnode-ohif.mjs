// Segnode for OHIF 3.13: live AI job status for the open study, and its results loaded without a reload.
//
// One dependency-free ES module, served by the node at /ohif/segnode-ohif.mjs. A prebuilt OHIF loads it
// with the browser's import() when app-config.js lists it:
//
//   extensions: ['https://segnode.example.org/ohif/segnode-ohif.mjs'],
//   segnode: { wsUrl: 'wss://segnode.example.org/ws/jobs', token: '<viewer token, if the node needs one>' },
//   customizationService: { mode: { '*': { rightPanels: { $push: ['segnode.panelModule.jobs'] } } } },  // optional
//
// It talks to nothing but that node: for each (re)connection it trades the token (in the Authorization
// header) for a single-use ticket, POST /api/ws-ticket, and opens /ws/jobs?study=<open study>&ticket=...
// (a browser WebSocket cannot send a header, and the token must never be in a URL); when a job is done,
// GET /api/jobs/<id> for its measurements. The API's scheme follows wsUrl's: wss -> https. It sends no
// patient data anywhere; the new series are fetched from the PACS through OHIF's own data source, as OHIF
// fetches everything else.

const EXTENSION_ID = 'segnode';
const PANEL_TAG = 'segnode-jobs';
const TERMINAL = new Set(['done', 'failed', 'cancelled', 'ignored']);
const RETRY_MS = [500, 1000, 2000, 4000, 8000];        // reconnect backoff, then every 8 s
const LOAD_TRIES = 20;                                  // the PACS may still be indexing the new series

const state = {
  config: null,              // window.config.segnode
  services: null,            // OHIF's servicesManager.services
  extensionManager: null,
  watches: new Map(),        // StudyInstanceUID -> StudyWatch
  panels: new Set(),         // connected <segnode-jobs> elements
};

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}

function authHeaders() {
  return state.config.token ? { Authorization: `Bearer ${state.config.token}` } : {};
}

// A ticket opens one socket, once, within 30 s; the token itself stays in headers.
async function ticket() {
  const response = await fetch(apiUrl('/api/ws-ticket'), { method: 'POST', headers: authHeaders() });
  if (!response.ok) throw new Error(`POST /api/ws-ticket: HTTP ${response.status}`);
  return (await response.json()).ticket;
}

async function socketUrl(study, since) {
  const url = new URL(state.config.wsUrl, window.location.href);
  url.protocol = url.protocol === 'https:' || url.protocol === 'wss:' ? 'wss:' : 'ws:';
  url.searchParams.set('study', study);
  if (since !== null) url.searchParams.set('since', String(since));
  url.searchParams.set('ticket', await ticket());
  return url.toString();
}

function apiUrl(path) {
  const url = new URL(state.config.wsUrl, window.location.href);
  url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
  url.pathname = url.pathname.replace(/\/ws\/jobs\/?$/, '') + path;
  url.search = '';
  return url.toString();
}

function notify(job) {
  const toasts = state.services?.uiNotificationService;
  if (!toasts) return;
  const type = job.state === 'done' ? 'success' : job.state === 'failed' ? 'error' : 'info';
  toasts.show({
    id: `segnode-${job.id}`,                     // one toast per job, updated in place
    title: `Segnode: ${job.state}`,
    message: [job.model, job.detail].filter(Boolean).join(' · ') || job.state,
    type,
    autoClose: TERMINAL.has(job.state),
    duration: TERMINAL.has(job.state) ? 8000 : 60000,
  });
}

function render() {
  for (const panel of state.panels) panel.render();
}

class StudyWatch {
  constructor(study) {
    this.study = study;
    this.jobs = new Map();           // job id -> {id, state, progress, model, detail, states, measurements, ...}
    this.lastSeq = null;             // the last event seq received: the `since` of the next connection
    this.status = 'connecting';
    this.connections = 0;
    this.socket = null;
    this.closed = false;
    this.retries = 0;
  }

  async open() {
    if (this.closed) return;
    let url;
    try {
      url = await socketUrl(this.study, this.lastSeq);
    } catch (error) {
      console.warn('segnode: no WebSocket ticket', error);
      this.reconnect();
      return;
    }
    if (this.closed) return;
    const ws = new WebSocket(url);
    this.socket = ws;
    ws.onmessage = message => this.receive(JSON.parse(message.data));
    ws.onclose = () => {
      if (this.socket !== ws || this.closed) return;
      this.reconnect();
    };
  }

  reconnect() {
    this.status = 'reconnecting';
    render();
    const wait = RETRY_MS[Math.min(this.retries, RETRY_MS.length - 1)];
    this.retries += 1;
    setTimeout(() => this.open(), wait);
  }

  close() {
    this.closed = true;
    this.socket?.close();
  }

  receive(message) {
    if (message.type === 'snapshot') {
      this.connections += 1;
      this.retries = 0;
      this.status = 'live';
      const resumed = this.lastSeq !== null;
      for (const job of message.jobs) this.seed(job, resumed);
      if (!resumed) this.lastSeq = message.seq;
    } else if (message.type === 'resync') {
      this.lastSeq = message.seq;    // the node closes this socket; the next one replays from here
    } else {
      this.lastSeq = Math.max(this.lastSeq ?? 0, message.seq);
      this.apply(message);
    }
    render();
  }

  // A job from the snapshot. On a resumed connection the replayed events carry its history,
  // so only what events do not say (model, series) is taken from it.
  seed(snap, resumed) {
    let job = this.jobs.get(snap.id);
    if (!job) {
      job = { id: snap.id, states: [], seqs: [], progress: null, detail: '', state: '', measurements: null,
              resultsShown: false };
      this.jobs.set(snap.id, job);
      if (!resumed) {
        job.state = snap.state;
        job.detail = snap.detail;
        job.progress = snap.progress;
        job.states.push(snap.state);
      }
    }
    job.model = snap.model;
    job.seriesDescription = snap.series_description;
    job.modality = snap.modality;
    if (snap.state === 'done' && !resumed) {
      job.measurements = measurementsOf(snap.results);
      this.showResults(job, snap.results?.delivered);
    }
  }

  apply(event) {
    let job = this.jobs.get(event.job_id);
    if (!job) {
      job = { id: event.job_id, states: [], seqs: [], progress: null, detail: '', state: '', model: '',
              measurements: null, resultsShown: false };
      this.jobs.set(event.job_id, job);
      this.fetchJob(job);            // model and series: the events do not repeat them
    }
    job.seqs.push(event.seq);
    job.progress = event.progress;
    job.detail = event.detail;
    if (event.state !== job.state) {
      job.state = event.state;
      job.states.push(event.state);
      notify(job);                   // a toast on each state change, not on each progress tick
    }
    if (event.state === 'queued' && !job.model) this.fetchJob(job);   // routed: the model is known now
    if (event.state === 'done') {
      this.fetchJob(job);            // its measurements
      this.showResults(job, event.delivered);
    }
  }

  async fetchJob(job) {
    try {
      const response = await fetch(apiUrl(`/api/jobs/${encodeURIComponent(job.id)}`), { headers: authHeaders() });
      if (!response.ok) return;
      const body = await response.json();
      job.model = body.model;
      job.seriesDescription = body.series_description;
      job.modality = body.modality;
      if (body.state === 'done') job.measurements = measurementsOf(body.results);
      render();
    } catch (error) {
      console.warn('segnode: job details not available', error);
    }
  }

  // Load the job's new SEG/SR series into the open study: find them with the data source's QIDO
  // series search and retrieve only their metadata; OHIF then makes their display sets (thumbnails).
  async showResults(job, delivered) {
    const wanted = new Map();
    for (const series of Object.values(delivered || {}).flat()) {
      wanted.set(series.series_instance_uid, series.sop_instance_uids.length);
    }
    if (!wanted.size || job.loading) return;
    job.loading = true;
    try {
      for (let attempt = 0; attempt < LOAD_TRIES; attempt += 1) {
        const shown = shownSeries();
        const missing = [...wanted.keys()].filter(uid => !shown.has(uid));
        if (!missing.length) {
          job.resultsShown = true;
          render();
          return;
        }
        const dataSource = state.extensionManager.getActiveDataSource()[0];
        const listed = new Map((await dataSource.query.series.search(this.study)).map(s => [s.seriesInstanceUid, s]));
        const ready = missing.filter(uid => listed.has(uid) && !(listed.get(uid).numSeriesInstances < wanted.get(uid)));
        if (ready.length) {
          forgetStudyMetadata(dataSource, this.study);
          await dataSource.retrieve.series.metadata({ StudyInstanceUID: this.study,
                                                      filters: { seriesInstanceUID: ready } });
          forgetStudyMetadata(dataSource, this.study);   // a later full load must not get only these series
        }
        await sleep(Math.min(500 * 2 ** attempt, 5000));
      }
      console.warn(`segnode: job ${job.id}: results not found in the PACS after ${LOAD_TRIES} tries`);
    } catch (error) {
      console.warn('segnode: could not load the results into the viewer', error);
    } finally {
      job.loading = false;
    }
  }
}

// OHIF 3.13.2 caches a study's metadata promise under "<data source name>:<study UID>" but its
// deleteStudyMetadataPromise deletes the bare study UID, so a second retrieve of the same study
// would return the first (stale) result. Delete under both keys.
function forgetStudyMetadata(dataSource, study) {
  if (typeof dataSource.deleteStudyMetadataPromise !== 'function') return;
  dataSource.deleteStudyMetadataPromise(`${dataSource.getConfig?.()?.name}:${study}`);
  dataSource.deleteStudyMetadataPromise(study);
}

function shownSeries() {
  const sets = state.services?.displaySetService?.getActiveDisplaySets?.() || [];
  return new Set(sets.map(d => d.SeriesInstanceUID));
}

function measurementsOf(results) {
  return (results?.series || []).flatMap(s => s.measurements || []);
}

function openStudies() {
  const query = new URLSearchParams(window.location.search);
  const uids = [...query.getAll('StudyInstanceUIDs'), ...query.getAll('studyInstanceUIDs')];
  return [...new Set(uids.flatMap(v => v.split(',')).map(v => v.trim()).filter(Boolean))];
}

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

class SegnodeJobs extends HTMLElement {
  connectedCallback() {
    state.panels.add(this);
    this.render();
  }

  disconnectedCallback() {
    state.panels.delete(this);
  }

  render() {
    const root = document.createElement('div');
    root.className = 'segnode-panel';
    root.style.cssText = 'padding:8px;font-size:13px;color:#dfe6f0;line-height:1.4';
    root.append(text('div', 'Segnode AI jobs', 'segnode-title'));
    const watches = [...state.watches.values()];
    if (!watches.length) root.append(text('p', 'No study open.', 'segnode-empty'));
    for (const watch of watches) {
      const section = document.createElement('section');
      section.dataset.study = watch.study;
      section.dataset.connection = watch.status;
      section.dataset.connections = String(watch.connections);
      section.append(text('div', watch.status === 'live' ? 'live' : watch.status, 'segnode-connection'));
      if (watch.status === 'live' && !watch.jobs.size) {
        section.append(text('p', 'No Segnode job for this study.', 'segnode-empty'));
      }
      for (const job of watch.jobs.values()) section.append(jobCard(job));
      root.append(section);
    }
    this.replaceChildren(root);
  }
}

function jobCard(job) {
  const card = document.createElement('article');
  card.className = 'segnode-job';
  card.dataset.jobId = job.id;
  card.dataset.state = job.state;
  card.dataset.results = job.resultsShown ? 'shown' : '';
  card.style.cssText = 'border:1px solid #3a4a66;border-radius:4px;padding:6px;margin:6px 0';
  const progress = job.progress === null || job.progress === undefined || TERMINAL.has(job.state)
    ? '' : ` ${Math.round(job.progress * 100)} %`;
  card.append(text('div', `${job.model || 'job'}: ${job.state}${progress}`, 'segnode-state'));
  if (job.seriesDescription) card.append(text('div', `${job.modality || ''} ${job.seriesDescription}`));
  if (job.detail) card.append(text('div', job.detail, job.state === 'failed' ? 'segnode-reason' : 'segnode-detail'));
  const history = document.createElement('ol');
  history.className = 'segnode-states';
  history.style.cssText = 'display:flex;gap:4px;list-style:none;padding:0;margin:4px 0;flex-wrap:wrap';
  job.states.forEach(s => history.append(text('li', s)));
  card.append(history);
  if (job.measurements?.length) {
    const table = document.createElement('table');
    table.className = 'segnode-measurements';
    for (const m of job.measurements) {
      const row = document.createElement('tr');
      row.append(text('td', m.name), text('td', `${m.volume_ml.toFixed(1)} mL`),
                 text('td', `${m.mean.toFixed(0)} ${m.unit || ''}`.trim()));
      table.append(row);
    }
    card.append(table);
  }
  if (job.resultsShown) card.append(text('div', 'SEG and SR loaded in this study', 'segnode-loaded'));
  card.dataset.seqs = job.seqs.join(',');
  return card;
}

function watchOpenStudies() {
  const wanted = new Set(openStudies());
  for (const [study, watch] of state.watches) {
    if (!wanted.has(study)) {
      watch.close();
      state.watches.delete(study);
    }
  }
  for (const study of wanted) {
    if (!state.watches.has(study)) {
      const watch = new StudyWatch(study);
      state.watches.set(study, watch);
      watch.open();
    }
  }
  render();
}

export default {
  id: EXTENSION_ID,

  preRegistration({ appConfig, servicesManager, extensionManager }) {
    state.config = appConfig.segnode || null;
    state.services = servicesManager.services;
    state.extensionManager = extensionManager;
    if (!state.config?.wsUrl) {
      console.warn('segnode: window.config.segnode.wsUrl is not set; the extension stays idle');
    }
    if (!customElements.get(PANEL_TAG)) customElements.define(PANEL_TAG, SegnodeJobs);
  },

  getPanelModule() {
    return [{ name: 'jobs', iconName: 'tab-linear', iconLabel: 'Segnode', label: 'Segnode', component: PANEL_TAG }];
  },

  onModeEnter({ servicesManager }) {
    state.services = servicesManager.services;
    if (state.config?.wsUrl) watchOpenStudies();
  },

  onModeExit() {
    for (const watch of state.watches.values()) watch.close();
    state.watches.clear();
    render();
  },
};
