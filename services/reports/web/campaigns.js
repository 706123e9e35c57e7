// Campaigns for marketing: the list with its figures, the form that creates and edits a campaign
// (with the reach of its audience), pause and resume, and the segment builder with live counts.
// Plain JavaScript on app.js's helpers (api, el, table); every value reaches the page as text,
// never as markup. The campaigns and segments APIs are the offers' and the profiles' services;
// the figures they do not keep (deliveries, revenue, lift) come from the campaigns report.
"use strict";

(() => {
  const campaignsUi = {
    views: [],
    editing: null,
    offer: null,
    variants: [],
    listTicket: 0,
    listFailed: false,
    reachTicket: 0,
    countTicket: 0,
    countTimer: 0,
  };
  const COUNT_DEBOUNCE_MS = 400;
  const LIST_REFRESH_MS = 15000;

  function byId(id) {
    return document.getElementById(id);
  }

  function problemText(status) {
    if (status === 401) return "Not signed in, or the token is not valid (401).";
    if (status === 403) return "Not allowed for this role (403).";
    if (status === 404) return "Not available on this server (404).";
    if (status === 503) return "Not ready yet; try again shortly (503).";
    return "Error " + status + ".";
  }

  class HttpProblem extends Error {
    constructor(status) {
      super(problemText(status));
      this.status = status;
    }
  }

  async function getJson(path) {
    const response = await api(path);
    if (!response.ok) throw new HttpProblem(response.status);
    return response.json();
  }

  function sendJson(path, method, body) {
    const options = { method, headers: { "Content-Type": "application/json" } };
    if (body !== undefined) options.body = JSON.stringify(body);
    return api(path, options);
  }

  function customers(n) {
    return n + (n === 1 ? " customer" : " customers");
  }

  // ---------------------------------------------------------------- form helpers

  function value(id) {
    return byId(id).value.trim();
  }

  // An integer as typed: a number when it is one, else the text (the API then names the field).
  function integer(text) {
    if (text === "") return undefined;
    return /^-?\d+$/.test(text) ? Number(text) : text;
  }

  // Money and percentages stay text: the API reads them as exact decimals.
  function decimal(text) {
    return text === "" ? undefined : text.replace(",", ".");
  }

  let fieldCounter = 0;

  function field(label, control) {
    if (!control.id) control.id = "f-" + ++fieldCounter;
    return el("div", { class: "field" }, el("label", { for: control.id }, label), control);
  }

  function input(path, attrs = {}) {
    return el("input", Object.assign({ "data-path": path, autocomplete: "off" }, attrs));
  }

  function select(path, options) {
    const node = el("select", path ? { "data-path": path } : {});
    for (const [optionValue, label] of options) node.append(el("option", { value: optionValue }, label));
    return node;
  }

  // ---------------------------------------------------------------- errors next to their fields

  function clearErrors(form) {
    for (const node of form.querySelectorAll(".field-error")) node.remove();
    for (const node of form.querySelectorAll("[aria-invalid]")) {
      node.removeAttribute("aria-invalid");
      node.removeAttribute("aria-describedby");
    }
  }

  // The control an error's `loc` names; for an error of a whole group (a rule over several
  // fields), the field its message names in backquotes; else the nearest enclosing group.
  function fieldFor(form, loc, message) {
    const visible = (path) => [...form.querySelectorAll("[data-path]")].find((node) => node.dataset.path === path && !node.closest("[hidden]"));
    const path = loc.join(".");
    const exact = path ? visible(path) : null;
    if (exact && exact.tagName !== "FIELDSET") return exact;
    for (const match of String(message).matchAll(/`([a-z_.]+)`/g)) {
      const named = (path && visible(path + "." + match[1])) || visible(match[1]);
      if (named) return named;
    }
    if (exact) return exact;
    for (let n = loc.length - 1; n > 0; n--) {
      const group = visible(loc.slice(0, n).join("."));
      if (group) return group;
    }
    return null;
  }

  function markError(target, message) {
    const note = el("span", { class: "field-error", id: "err-" + ++fieldCounter }, message);
    if (target.tagName === "FIELDSET") {
      const legend = target.querySelector("legend");
      if (legend) legend.after(note);
      else target.prepend(note);
    } else {
      target.setAttribute("aria-invalid", "true");
      target.setAttribute("aria-describedby", note.id);
      target.after(note);
    }
  }

  // pydantic's `detail`: a list of {loc, msg}; a plain string for other refusals.
  function showErrors(form, detail, status) {
    clearErrors(form);
    const general = [];
    const items = Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail ?? "") }];
    for (const item of items) {
      const loc = (item.loc || []).map(String);
      if (loc[0] === "body") loc.shift();
      const message = String(item.msg || "invalid").replace(/^Value error, /, "");
      const target = fieldFor(form, loc, message);
      if (target) markError(target, message);
      else general.push(message);
    }
    status.textContent = general.length ? general.join(" ") : "Please correct the fields marked.";
  }

  async function refusal(response, form, status) {
    let detail = null;
    try {
      detail = (await response.json()).detail;
    } catch (error) {
      detail = null;
    }
    if (response.status === 422 && detail) return showErrors(form, detail, status);
    status.textContent = problemText(response.status) + (typeof detail === "string" ? " " + detail : "");
  }

  // ---------------------------------------------------------------- the offer (and each arm's)

  function offerEditor(container, prefix) {
    const discount = input(prefix + ".discount_percent", { inputmode: "decimal" });
    const scope = select(prefix + ".scope", [["sku", "a product (SKU)"], ["category", "a category"], ["basket", "the whole basket"]]);
    const sku = input(prefix + ".sku", { maxlength: "64" });
    const category = input(prefix + ".category", { maxlength: "100" });
    const validity = input(prefix + ".validity_days", { type: "number", min: "0", inputmode: "numeric" });
    const skuField = field("SKU (empty: the SKU bought)", sku);
    const categoryField = field("Category (empty: the category bought)", category);
    container.append(
      field("Discount (%)", discount),
      field("Off", scope),
      skuField,
      categoryField,
      field("Valid for (days after issue)", validity),
    );
    const sync = () => {
      skuField.hidden = scope.value !== "sku";
      categoryField.hidden = scope.value !== "category";
    };
    scope.addEventListener("change", sync);
    return {
      read() {
        const offer = { discount_percent: decimal(discount.value.trim()), scope: scope.value };
        if (scope.value === "sku" && sku.value.trim()) offer.sku = sku.value.trim().toUpperCase();
        if (scope.value === "category" && category.value.trim()) offer.category = category.value.trim();
        const days = integer(validity.value.trim());
        if (days !== undefined) offer.validity_days = days;
        return offer;
      },
      write(offer) {
        discount.value = offer.discount_percent ?? "";
        scope.value = offer.scope || "basket";
        sku.value = offer.sku || "";
        category.value = offer.category || "";
        validity.value = offer.validity_days ?? 14;
        sync();
      },
    };
  }

  function variantEditor(index, variant) {
    const box = el("fieldset", { class: "variant", "data-path": `variants.${index}` }, el("legend", {}, `Variant ${index + 1}`));
    const name = input(`variants.${index}.name`, { maxlength: "64" });
    const weight = input(`variants.${index}.weight`, { type: "number", min: "1", inputmode: "numeric" });
    const template = input(`variants.${index}.template`, { maxlength: "64" });
    const grid = el("div", { class: "grid" }, field("Name", name), field("Weight", weight), field("Template (optional)", template));
    const offerGrid = el("div", { class: "grid" });
    const remove = el("button", { type: "button", class: "secondary" }, "Remove variant");
    box.append(grid, offerGrid, remove);
    const offer = offerEditor(offerGrid, `variants.${index}.offer`);
    name.value = variant.name || "";
    weight.value = variant.weight ?? 1;
    template.value = variant.template || "";
    offer.write(variant.offer || { discount_percent: "10", scope: "basket", validity_days: 14 });
    const editor = {
      box,
      remove,
      read() {
        const out = { name: name.value.trim(), offer: offer.read() };
        const w = integer(weight.value.trim());
        if (w !== undefined) out.weight = w;
        if (template.value.trim()) out.template = template.value.trim();
        return out;
      },
    };
    return editor;
  }

  function renderVariants(variants) {
    const host = byId("c-variants");
    campaignsUi.variants = variants.map((v, n) => variantEditor(n, v));
    host.replaceChildren(...campaignsUi.variants.map((v) => v.box));
    campaignsUi.variants.forEach((editor, n) => {
      editor.remove.addEventListener("click", () => {
        const kept = campaignsUi.variants.map((v) => v.read()).filter((_, m) => m !== n);
        renderVariants(kept);
      });
    });
  }

  // ---------------------------------------------------------------- the campaign form

  function syncTrigger() {
    const type = byId("c-trigger-type").value;
    for (const node of document.querySelectorAll("#campaign-form [data-for-trigger]")) {
      node.hidden = !node.dataset.forTrigger.split(" ").includes(type);
    }
    const by = byId("c-trigger-by").value;
    for (const node of document.querySelectorAll("#campaign-form [data-for-by]")) {
      node.hidden = node.dataset.forBy !== by;
    }
  }

  function readTrigger() {
    const type = byId("c-trigger-type").value;
    const trigger = { type };
    if (type === "purchase") {
      const by = byId("c-trigger-by").value;
      if (by === "sku") trigger.sku = value("c-trigger-sku").toUpperCase() || null;
      else if (by === "category") trigger.category = value("c-trigger-category") || null;
      else trigger.any_sku = true;
      trigger.min_checkouts = integer(value("c-trigger-min-checkouts"));
      trigger.window_days = integer(value("c-trigger-window"));
    } else if (type === "inactive") {
      trigger.days = integer(value("c-trigger-days")) ?? null;
      trigger.min_visits = integer(value("c-trigger-min-visits"));
    } else if (type === "segment_entered") {
      trigger.segment = value("c-trigger-segment") || null;
    }
    if (type === "purchase" || type === "inactive") {
      const cooldown = integer(value("c-trigger-cooldown"));
      if (cooldown !== undefined) trigger.cooldown_days = cooldown;
    }
    return trigger;
  }

  function readSpec() {
    // What the form does not show (the budget) is kept as it was.
    const spec = Object.assign({}, campaignsUi.editing ? campaignsUi.editing.spec : {});
    spec.name = byId("c-name").value.trim();
    spec.trigger = readTrigger();
    spec.audience = { segment: value("c-audience") || "all" };
    spec.offer = campaignsUi.offer.read();
    spec.variants = campaignsUi.variants.map((v) => v.read());
    spec.template = value("c-template") || "campaign";
    spec.starts_on = value("c-starts-on") || null;
    spec.ends_on = value("c-ends-on") || null;
    const holdout = decimal(value("c-holdout"));
    if (holdout === undefined) delete spec.holdout_percent;
    else spec.holdout_percent = holdout;
    return spec;
  }

  function ensureOption(selectNode, name) {
    if (!name || [...selectNode.options].some((o) => o.value === name)) return;
    selectNode.append(el("option", { value: name }, name));
  }

  function writeSpec(spec) {
    const t = spec.trigger;
    byId("c-name").value = spec.name || "";
    byId("c-trigger-type").value = t.type;
    byId("c-trigger-by").value = t.any_sku ? "any_sku" : t.category ? "category" : "sku";
    byId("c-trigger-sku").value = t.sku || "";
    byId("c-trigger-category").value = t.category || "";
    byId("c-trigger-min-checkouts").value = t.min_checkouts ?? 1;
    byId("c-trigger-window").value = t.window_days ?? 30;
    byId("c-trigger-days").value = t.days ?? "";
    byId("c-trigger-min-visits").value = t.min_visits ?? 1;
    byId("c-trigger-cooldown").value = t.cooldown_days ?? "";
    if (t.segment) {
      ensureOption(byId("c-trigger-segment"), t.segment);
      byId("c-trigger-segment").value = t.segment;
    }
    const audience = (spec.audience && spec.audience.segment) || "all";
    ensureOption(byId("c-audience"), audience);
    byId("c-audience").value = audience;
    campaignsUi.offer.write(spec.offer);
    renderVariants(spec.variants || []);
    byId("c-template").value = spec.template || "campaign";
    byId("c-starts-on").value = spec.starts_on || "";
    byId("c-ends-on").value = spec.ends_on || "";
    byId("c-holdout").value = spec.holdout_percent ?? "5";
    syncTrigger();
  }

  const NEW_CAMPAIGN = {
    name: "",
    trigger: { type: "purchase", min_checkouts: 2, window_days: 30 },
    audience: { segment: "all" },
    offer: { discount_percent: "10", scope: "sku", validity_days: 14 },
    variants: [],
    template: "campaign",
    holdout_percent: "5",
  };

  function openCampaignForm(view) {
    const form = byId("campaign-form");
    campaignsUi.editing = view;
    clearErrors(form);
    byId("campaign-form-status").textContent = "";
    byId("campaign-form-title").textContent = view ? `Edit ${view.name}` : "New campaign";
    writeSpec(view ? view.spec : NEW_CAMPAIGN);
    form.hidden = false;
    updateReach();
    form.scrollIntoView({ block: "start" });
    byId("c-name").focus({ preventScroll: true });
  }

  function closeCampaignForm() {
    byId("campaign-form").hidden = true;
    campaignsUi.editing = null;
  }

  async function updateReach() {
    const out = byId("c-reach");
    const name = value("c-audience");
    const ticket = ++campaignsUi.reachTicket;
    delete out.dataset.count;
    if (!name) {
      out.textContent = "";
      return;
    }
    out.textContent = "Counting the audience…";
    let text;
    try {
      const segment = await getJson(`/api/segments/${encodeURIComponent(name)}`);
      if (ticket !== campaignsUi.reachTicket) return;
      out.dataset.count = String(segment.count);
      text = `This would reach ${customers(segment.count)} today.`;
    } catch (error) {
      text = "Reach unknown: " + error.message;
    }
    if (ticket === campaignsUi.reachTicket) out.textContent = text;
  }

  async function saveCampaign(event) {
    event.preventDefault();
    const form = byId("campaign-form");
    const status = byId("campaign-form-status");
    clearErrors(form);
    status.textContent = "Saving…";
    const editing = campaignsUi.editing;
    const spec = readSpec();
    const response = editing
      ? await sendJson(`/api/campaigns/${encodeURIComponent(editing.campaign_id)}`, "PUT", spec)
      : await sendJson("/api/campaigns", "POST", spec);
    if (!response.ok) return refusal(response, form, status);
    const saved = await response.json();
    status.textContent = "";
    closeCampaignForm();
    byId("campaigns-status").textContent = editing
      ? `Saved ${saved.name}: version ${saved.version}, ${saved.status}.`
      : `Created ${saved.campaign_id}: ${saved.status}.`;
    await refreshCampaigns();
  }

  // ---------------------------------------------------------------- the list and its figures

  function liftText(row) {
    if (!row || row.lift === null || row.lift === undefined) return "not measurable yet";
    const interval = row.lift_low !== null && row.lift_low !== undefined ? ` (95 %: ${row.lift_low} to ${row.lift_high})` : "";
    return row.lift + interval;
  }

  function describeSpec(spec) {
    const t = spec.trigger;
    const what = t.sku || t.category || "any SKU";
    const when = {
      purchase: `${what} bought ${t.min_checkouts}× within ${t.window_days} days`,
      birthday: "birthday",
      anniversary: "first-purchase anniversary",
      inactive: `no visit for ${t.days} days`,
      segment_entered: `enters ${t.segment}`,
    }[t.type] || t.type;
    const o = spec.offer;
    const off = o.scope === "basket" ? "the basket" : o.sku || o.category || (o.scope === "sku" ? "the SKU bought" : "the category bought");
    const arms = spec.variants && spec.variants.length ? `, ${spec.variants.length} variants` : "";
    return `${when} → ${o.discount_percent} % off ${off}; audience ${spec.audience.segment}${arms}`;
  }

  function figure(name, label, shown) {
    return el("div", { class: "figure", "data-figure": name }, el("dt", {}, label), el("dd", {}, shown ?? "–"));
  }

  function campaignCard(view, results) {
    const row = results.get(view.campaign_id + "\u0000");
    const counts = view.counts || {};
    const card = el("article", { class: "campaign", "data-campaign-id": view.campaign_id, "data-status": view.status });
    card.append(
      el("div", { class: "card-head" },
        el("h4", {}, view.name),
        el("span", { class: "badge status-" + view.status }, view.status),
        el("span", { class: "muted" }, view.campaign_id + (view.builtin ? " · built-in" : "") + " · v" + view.version)),
      el("p", { class: "muted" }, describeSpec(view.spec)),
      el("dl", { class: "figures" },
        figure("issued", "Issued", counts.issued ?? 0),
        figure("delivered", "Delivered", row ? row.delivered : undefined),
        figure("redeemed", "Redeemed", counts.redeemed ?? 0),
        figure("revenue", "Revenue", row ? row.revenue : undefined),
        figure("held_out", "Held out", counts.held_out ?? 0),
        figure("lift", "Lift per customer", liftText(row))),
    );
    if (view.variants && view.variants.length) {
      const arms = view.variants.map((v) => {
        const r = results.get(view.campaign_id + "\u0000" + v.variant);
        return { variant: v.variant, issued: v.issued, redeemed: v.redeemed, delivered: r ? r.delivered : "–", revenue: r ? r.revenue : "–", lift: liftText(r) };
      });
      card.append(el("div", { class: "table-wrap" }, table(["variant", "issued", "delivered", "redeemed", "revenue", "lift"], arms, "Per variant, lift against the campaign's hold-out")));
    }
    const edit = el("button", { type: "button", "data-action": "edit" }, "Edit");
    edit.addEventListener("click", () => openCampaignForm(view));
    const paused = view.status === "paused";
    const toggle = el("button", { type: "button", "data-action": paused ? "resume" : "pause" }, paused ? "Resume" : "Pause");
    toggle.addEventListener("click", () => setPaused(view, !paused, toggle));
    card.append(el("div", { class: "actions" }, edit, toggle));
    return card;
  }

  async function refreshCampaigns() {
    const status = byId("campaigns-status");
    const list = byId("campaign-list");
    const ticket = ++campaignsUi.listTicket;
    let views;
    try {
      views = (await getJson("/api/campaigns")).campaigns;
    } catch (error) {
      if (ticket !== campaignsUi.listTicket) return;
      list.replaceChildren();
      status.textContent = "Campaigns: " + error.message;
      campaignsUi.listFailed = true;
      return;
    }
    const results = new Map();
    let note = "";
    try {
      const report = await getJson("/api/reports/campaigns");
      for (const row of report.campaigns || []) results.set(row.campaign_id + "\u0000" + (row.variant ?? ""), row);
    } catch (error) {
      note = "Deliveries, revenue and lift: " + error.message;
    }
    if (ticket !== campaignsUi.listTicket) return;
    campaignsUi.views = views;
    list.replaceChildren(...views.map((v) => campaignCard(v, results)));
    if (!views.length) list.append(el("p", {}, "No campaigns yet."));
    if (note || campaignsUi.listFailed) status.textContent = note;
    campaignsUi.listFailed = false;
  }

  async function setPaused(view, pause, button) {
    button.disabled = true;
    const status = byId("campaigns-status");
    const response = await sendJson(`/api/campaigns/${encodeURIComponent(view.campaign_id)}/${pause ? "pause" : "resume"}`, "POST");
    if (!response.ok) {
      status.textContent = `${view.name}: ${problemText(response.status)}`;
      button.disabled = false;
      return;
    }
    const updated = await response.json();
    status.textContent = `${updated.name} is ${updated.status}.`;
    await refreshCampaigns();
  }

  // ---------------------------------------------------------------- segments

  async function loadSegments() {
    const status = byId("segments-status");
    let segments = [];
    try {
      segments = (await getJson("/api/segments")).segments;
      status.textContent = "";
    } catch (error) {
      status.textContent = "Segments: " + error.message;
    }
    for (const node of document.querySelectorAll(".segment-select")) {
      const chosen = node.value;
      const options = segments.map((s) => el("option", { value: s.name }, `${s.name} (${s.count})`));
      if (!segments.some((s) => s.name === "all")) options.unshift(el("option", { value: "all" }, "all"));
      node.replaceChildren(...options);
      if (chosen) {
        ensureOption(node, chosen);
        node.value = chosen;
      }
    }
    const rows = segments.map((s) => ({ name: s.name, customers: s.count, description: s.description || (s.builtin ? "built-in" : "") }));
    byId("segment-list").replaceChildren(table(["name", "customers", "description"], rows, "Segments and how many customers are in each now"));
    if (!byId("campaign-form").hidden) updateReach();
  }

  function boughtRow(index) {
    const by = select(`rule.bought.${index}.by`, [["sku", "SKU"], ["category", "category"]]);
    const what = input(`rule.bought.${index}.sku`, { maxlength: "100" });
    const within = input(`rule.bought.${index}.within_days`, { type: "number", min: "1", inputmode: "numeric", value: "30" });
    const times = input(`rule.bought.${index}.min_checkouts`, { type: "number", min: "1", inputmode: "numeric", value: "1" });
    const remove = el("button", { type: "button", class: "secondary" }, "Remove");
    const box = el("div", { class: "grid bought", "data-path": `rule.bought.${index}` },
      field("Of a", by), field("Which", what), field("Within (days)", within), field("Times, at least", times), remove);
    by.addEventListener("change", () => {
      what.dataset.path = `${box.dataset.path}.${by.value}`;
    });
    remove.addEventListener("click", () => {
      box.remove();
      renumberBought();
      scheduleCount();
    });
    return box;
  }

  function renumberBought() {
    const rows = [...byId("s-bought").children];
    rows.forEach((row, n) => {
      row.dataset.path = `rule.bought.${n}`;
      for (const node of row.querySelectorAll("[data-path]")) {
        node.dataset.path = node.dataset.path.replace(/^rule\.bought\.\d+/, `rule.bought.${n}`);
      }
    });
  }

  function readRule() {
    const rule = {};
    for (const node of document.querySelectorAll("#segment-form [data-rule]")) {
      const text = node.value.trim();
      const type = node.dataset.type;
      let parsed;
      if (type === "decimal") parsed = decimal(text);
      else if (type === "int") parsed = integer(text);
      else if (type === "bool") parsed = text === "" ? undefined : text === "true";
      else if (type === "list") {
        const items = text.split(",").map((s) => s.trim()).filter(Boolean);
        parsed = items.length ? items : undefined;
      }
      if (parsed !== undefined) rule[node.dataset.rule] = parsed;
    }
    const rfm = [...document.querySelectorAll("#segment-form input[name=rfm]:checked")].map((n) => n.value);
    if (rfm.length) rule.rfm_segment = rfm;
    // A row whose product or category is still empty selects nobody yet: left out.
    const rows = [...byId("s-bought").children].filter((row) => row.querySelector("input").value.trim());
    const bought = rows.map((row) => {
      const [by, what, within, times] = row.querySelectorAll("select, input");
      const item = {};
      const text = what.value.trim();
      item[by.value] = by.value === "sku" ? text.toUpperCase() : text;
      const days = integer(within.value.trim());
      const count = integer(times.value.trim());
      if (days !== undefined) item.within_days = days;
      if (count !== undefined) item.min_checkouts = count;
      return item;
    });
    if (bought.length) rule.bought = bought;
    return rule;
  }

  function scheduleCount() {
    clearTimeout(campaignsUi.countTimer);
    campaignsUi.countTimer = setTimeout(previewCount, COUNT_DEBOUNCE_MS);
  }

  async function previewCount() {
    const form = byId("segment-form");
    const out = byId("segment-count");
    const status = byId("segment-form-status");
    const ticket = ++campaignsUi.countTicket;
    const response = await sendJson("/api/segments/preview", "POST", { rule: readRule() });
    if (ticket !== campaignsUi.countTicket) return;
    delete out.dataset.count;
    if (!response.ok) {
      out.textContent = "";
      return refusal(response, form, status);
    }
    clearErrors(form);
    status.textContent = "";
    const { count } = await response.json();
    out.dataset.count = String(count);
    out.textContent = `${customers(count)} match today.`;
  }

  async function saveSegment(event) {
    event.preventDefault();
    const form = byId("segment-form");
    const status = byId("segment-form-status");
    clearErrors(form);
    const body = { name: value("s-name"), rule: readRule() };
    if (value("s-description")) body.description = value("s-description");
    status.textContent = "Saving…";
    const response = await sendJson("/api/segments", "POST", body);
    if (!response.ok) return refusal(response, form, status);
    const saved = await response.json();
    status.textContent = `Saved segment ${saved.name}: ${customers(saved.count)}.`;
    await loadSegments();
  }

  // ---------------------------------------------------------------- wiring

  function openCampaigns() {
    loadSegments();
    refreshCampaigns();
  }

  campaignsUi.offer = offerEditor(document.querySelector("#campaign-form .offer-fields"), "offer");
  byId("campaign-new").addEventListener("click", () => openCampaignForm(null));
  byId("campaigns-refresh").addEventListener("click", () => {
    refreshCampaigns();
    loadCampaigns(); // reports.js: the headline figures, the charts and the tables
  });
  byId("campaign-cancel").addEventListener("click", closeCampaignForm);
  byId("campaign-form").addEventListener("submit", saveCampaign);
  byId("c-trigger-type").addEventListener("change", syncTrigger);
  byId("c-trigger-by").addEventListener("change", syncTrigger);
  byId("c-audience").addEventListener("change", updateReach);
  byId("c-variant-add").addEventListener("click", () => {
    const kept = campaignsUi.variants.map((v) => v.read());
    const name = String.fromCharCode(97 + kept.length); // a, b, c, ...
    kept.push({ name, weight: 1, offer: campaignsUi.offer.read() });
    renderVariants(kept);
  });
  byId("segment-form").addEventListener("submit", saveSegment);
  byId("segment-form").addEventListener("input", (event) => {
    if (event.target.closest("[data-path^='rule']")) scheduleCount();
  });
  byId("segment-form").addEventListener("change", (event) => {
    if (event.target.closest("[data-path^='rule']") || event.target.name === "rfm") scheduleCount();
  });
  byId("s-bought-add").addEventListener("click", () => {
    byId("s-bought").append(boughtRow(byId("s-bought").children.length));
    scheduleCount();
  });

  // The figures move as offers are issued: refresh the list while it is on screen.
  setInterval(() => {
    if (token && location.hash === "#campaigns" && document.visibilityState === "visible") refreshCampaigns();
  }, LIST_REFRESH_MS);

  window.crmCampaigns = { open: openCampaigns };
})();
