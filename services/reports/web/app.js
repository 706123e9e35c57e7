// The crm-stream page: plain JavaScript, no library, no CDN. The token stays in this tab only.
"use strict";

const pages = ["customer", "campaigns", "products", "stores", "sentiment"];
let token = sessionStorage.getItem("crm-token") || "";

function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token }, options.headers || {});
  return fetch(path, Object.assign({}, options, { headers }));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function table(columns, rows, caption) {
  const head = el("tr", {}, ...columns.map((c) => el("th", { scope: "col" }, c)));
  const body = rows.map((r) => el("tr", {}, ...columns.map((c) => el("td", {}, r[c] ?? ""))));
  return el("table", {}, el("caption", {}, caption || ""), el("thead", {}, head), el("tbody", {}, ...body));
}

function show(page) {
  document.getElementById("login").hidden = Boolean(token);
  document.getElementById("sign-out").hidden = !token;
  for (const p of pages) {
    document.getElementById(p).hidden = !token || p !== page;
    const button = document.querySelector(`nav button[data-page="${p}"]`);
    if (p === page) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  if (!token) return;
  location.hash = page;
  if (page === "campaigns") {
    loadCampaigns();
    if (window.crmCampaigns) window.crmCampaigns.open();
  }
  if (page === "products") loadProducts();
  if (page === "stores") loadStores();
  if (page === "sentiment" && window.crmSentiment) window.crmSentiment.load();
}

function unescapeXml(text) {
  const entities = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };
  return text.replace(/&(amp|lt|gt|quot|apos);/g, (_, name) => entities[name]);
}

// A chart is shown as an image of the SVG fetched with the token (a blob: URL): the SVG's own
// styles then need no exception in the page's Content-Security-Policy, and nothing in it runs.
async function chart(name, target, query = "") {
  const response = await api(`/api/charts/${name}.svg${query}`);
  const box = document.getElementById(target);
  if (!response.ok) {
    box.textContent = "chart not available (" + response.status + ")";
    return;
  }
  const svg = await response.text();
  // its accessible name, from the root element (not parsed into this document: its styles stay out)
  const found = /<svg [^>]*aria-label="([^"]*)"/.exec(svg);
  const label = found ? unescapeXml(found[1]) : name + " chart";
  const url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
  const image = el("img", { src: url, alt: label });
  image.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  box.replaceChildren(image);
}

async function report(name) {
  const response = await api(`/api/reports/${name}`);
  if (!response.ok) throw new Error(response.status === 403 ? "not allowed for this role" : "error " + response.status);
  return response.json();
}

// loadCampaigns, loadProducts and loadStores: reports.js (the reports' views).

const UNREACHABLE = { no_email: "no address", unsubscribed: "unsubscribed", no_consent: "no consent", bounced: "bounced", erased: "erased" };

function emailStatus(s) {
  // Not reachable: why, and since when (the bounce, or the consent or address statement).
  if (s.reachable) return "reachable";
  const reason = UNREACHABLE[s.unreachable_reason] || "not reachable";
  return s.unreachable_since ? `not reachable: ${reason} since ${s.unreachable_since.slice(0, 10)}` : `not reachable: ${reason}`;
}

function customerView(c) {
  const card = (label, value) => el("div", { class: "card" }, label, el("b", {}, value));
  const coupon = (o) => ({ code: o.coupon_code, kind: o.kind, discount: o.discount_percent + " %", product: o.product_name || o.sku || "basket", valid: `${o.valid_from} to ${o.valid_until}`, state: o.state });
  const couponCols = ["code", "kind", "discount", "product", "valid", "state"];
  return [
    el("h3", {}, (c.first_name || "Customer") + " · " + c.customer_id),
    el("div", { class: "cards" },
      card("Segment", c.segment), card("Visits", c.visits), card("Spend", c.total_spend),
      card("Average basket", c.average_spend), card("Home store", c.home_store_id || "-"),
      card("E-mail", emailStatus(c.email_status))),
    el("h4", {}, "Open coupons"), table(couponCols, c.coupons.open.map(coupon), "Coupons the customer can use"),
    el("h4", {}, "Used coupons"), table(couponCols, c.coupons.used.map(coupon), "Coupons redeemed"),
    el("h4", {}, "Recent purchases"), table(["at", "store_id", "total", "lines"], c.recent_purchases.map((p) => ({ ...p, at: p.local_at ? p.local_at.slice(0, 16).replace("T", " ") : p.at })), "Latest checkouts, in the store's time"),
    el("h4", {}, "Favourite products"), table(["key", "checkouts", "spend"], c.favourite_products, ""),
    // favourite categories, interactions with their details, consent history, the journey
    ...(window.crmJourney ? window.crmJourney.panel(c) : [el("h4", {}, "Latest interactions"), table(["at", "type", "channel"], c.latest_interactions, "Support tickets, e-mail opens and clicks")]),
    ...(window.crmSentiment ? window.crmSentiment.panel(c) : []),
  ];
}

document.getElementById("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("customer-status");
  const view = document.getElementById("customer-view");
  status.textContent = "Searching…";
  const response = await api("/api/customers/lookup", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ card_number: document.getElementById("card").value }),
  });
  if (!response.ok) {
    view.replaceChildren();
    status.textContent = response.status === 404 ? "No customer with this card." : response.status === 403 ? "Not allowed for this role." : "Error " + response.status;
    return;
  }
  status.textContent = "";
  view.replaceChildren(...customerView(await response.json()));
});

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("crm-token", token);
  show(pages.includes(location.hash.slice(1)) ? location.hash.slice(1) : "customer");
});

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => show(button.dataset.page));
}

document.getElementById("sign-out").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem("crm-token");
  document.getElementById("token").value = "";
  show("customer");
});

// After every script of the page has run (campaigns.js adds the campaigns view).
window.addEventListener("DOMContentLoaded", () => {
  show(pages.includes(location.hash.slice(1)) ? location.hash.slice(1) : "customer");
});
