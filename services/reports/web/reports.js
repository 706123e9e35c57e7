// The reports' views: the campaigns dashboard (headline figures for the chosen period, the
// charts, the table per campaign with the week-by-week breakdown on demand), products (with
// what is bought together) and stores and teams against their goals. Plain JavaScript on
// app.js's helpers (api, el, table, chart); every value reaches the page as text.
"use strict";

async function reportData(name, query = "") {
  const response = await api(`/api/reports/${name}${query}`);
  if (!response.ok) throw new Error(response.status === 403 ? "not allowed for this role" : "error " + response.status);
  return response.json();
}

function orDash(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function percentOf(rate) {
  return rate === null || rate === undefined ? "–" : (Number(rate) * 100).toFixed(1) + " %";
}

function liftShown(row) {
  if (!row || row.lift === null || row.lift === undefined) return "not measurable yet";
  if (row.lift_low === null || row.lift_low === undefined) return String(row.lift);
  return `${row.lift} (95 %: ${row.lift_low} to ${row.lift_high})`;
}

// What the lift says, in words: an interval wholly above (or below) zero is a finding.
function liftVerdict(row) {
  if (!row || row.lift_low === null || row.lift_low === undefined) return "too few customers to tell yet";
  if (Number(row.lift_low) > 0) return "treated customers spent more: the offers worked";
  if (Number(row.lift_high) < 0) return "treated customers spent less";
  return "no clear difference from the held-out customers";
}

function headlineFigure(name, label, shown, note) {
  const box = el("div", { class: "figure headline-figure", "data-figure": name }, el("dt", {}, label), el("dd", {}, shown));
  if (note) box.append(el("dd", { class: "muted" }, note));
  return box;
}

function campaignsQuery() {
  return "?weeks=" + encodeURIComponent(document.getElementById("campaigns-weeks").value);
}

async function loadCampaigns() {
  const target = document.getElementById("campaigns-table");
  const headline = document.getElementById("campaigns-headline");
  const period = document.getElementById("campaigns-period");
  const query = campaignsQuery();
  try {
    const data = await reportData("campaigns", query);
    const h = data.headline;
    period.textContent = `Offers valid from ${data.since} to ${data.as_of}`;
    headline.replaceChildren(
      headlineFigure("issued", "Offers issued", orDash(h && h.issued), h ? `${h.held_out} held out to measure` : ""),
      headlineFigure("redeemed", "Redeemed", orDash(h && h.redeemed), h ? percentOf(h.redemption_rate) + " of those issued" : ""),
      headlineFigure("revenue", "Revenue of redeeming baskets", orDash(h && h.revenue), h ? `${h.discount} given in discounts` : ""),
      headlineFigure("lift", "Lift: spend per customer", liftShown(h), liftVerdict(h)),
    );
    const rows = (data.campaigns || []).map((r) => ({
      campaign: (r.name || r.campaign_id) + (r.variant ? " · " + r.variant : ""),
      status: orDash(r.status),
      issued: r.issued,
      delivered: r.delivered,
      redeemed: r.redeemed,
      rate: percentOf(r.redemption_rate),
      revenue: r.revenue,
      lift: liftShown(r),
    }));
    const weekly = data.rows.filter((r) => r.week !== "all").map((r) => ({
      week: r.week, kind: r.kind, issued: r.issued, held_out: r.held_out, redeemed: r.redeemed, revenue: r.revenue, lift: liftShown(r),
    }));
    target.replaceChildren(table(["campaign", "status", "issued", "delivered", "redeemed", "rate", "revenue", "lift"], rows, "Per campaign and A/B variant; lift against the campaign's own hold-out"));
    document.getElementById("campaigns-weekly-table").replaceChildren(table(["week", "kind", "issued", "held_out", "redeemed", "revenue", "lift"], weekly, "Per offer kind and campaign week"));
    await Promise.all([chart("issued", "chart-issued", query), chart("lift", "chart-lift", query)]);
  } catch (error) { target.textContent = error.message; }
}

async function loadProducts() {
  const target = document.getElementById("products-table");
  try {
    const data = await reportData("products");
    const cols = ["key", "revenue", "units", "buyers", "previous_revenue", "revenue_change_percent"];
    target.replaceChildren(table(cols, data.skus, `Top SKUs, ${data.start} to ${data.as_of}`), table(cols, data.categories, "Top categories"));
    const together = data.bought_together;
    const pairs = together ? together.pairs.map((p) => ({
      pair: `${p.sku_a} + ${p.sku_b}`,
      checkouts: p.baskets,
      support: percentOf(p.support),
      "confidence a→b": percentOf(p.confidence_a_b),
      "confidence b→a": percentOf(p.confidence_b_a),
      lift: p.lift,
    })) : [];
    const caption = together ? `Bought together, ${together.start} to ${together.as_of}: ${together.baskets} checkouts; lift above 1 means more often together than by chance` : "Bought together";
    document.getElementById("products-pairs").replaceChildren(table(["pair", "checkouts", "support", "confidence a→b", "confidence b→a", "lift"], pairs, caption));
    await chart("products", "chart-products");
  } catch (error) { target.textContent = error.message; }
}

function goalRow(r, who) {
  return Object.assign(who, {
    revenue: r.revenue,
    "goal to date": orDash(r.revenue_goal_to_date),
    "% of goal to date": orDash(r.revenue_percent_of_goal_to_date),
    "month's goal": orDash(r.revenue_goal),
    visits: r.visits,
    "visits % to date": orDash(r.visits_percent_of_goal_to_date),
  });
}

async function loadStores() {
  const target = document.getElementById("stores-table");
  try {
    const data = await reportData("stores");
    const cols = ["revenue", "goal to date", "% of goal to date", "month's goal", "visits", "visits % to date"];
    const when = `${data.month}, day ${data.days_elapsed} of ${data.days_in_month}`;
    document.getElementById("teams-table").replaceChildren(table(["team", "stores", ...cols], data.teams.map((t) => goalRow(t, { team: t.team, stores: t.stores.join(", ") })), `Teams, ${when}`));
    target.replaceChildren(table(["store", "team", ...cols], data.rows.map((r) => goalRow(r, { store: r.store_id, team: r.teams.join(", ") })), `Stores, ${when}`));
    await Promise.all([chart("teams", "chart-teams"), chart("stores", "chart-stores")]);
  } catch (error) { target.textContent = error.message; }
}

document.getElementById("campaigns-weeks").addEventListener("change", () => loadCampaigns());
