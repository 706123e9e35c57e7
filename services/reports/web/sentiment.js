// Sentiment: the customer's opinions per brand and category on the customer page, and the
// marketing report (per brand and category, per ISO week). Uses app.js's api, el and table.
"use strict";

(function () {
  const COLUMNS = ["label", "positive", "neutral", "negative", "net"];
  // Short headings, so that the table fits a phone; the full words in their titles.
  const HEADINGS = { positive: ["pos.", "positive"], neutral: ["neu.", "neutral"], negative: ["neg.", "negative"], net: ["net", "net score"] };

  function signed(score) {
    const n = Number(score);
    return (n > 0 ? "+" : "") + score;
  }

  // A table of opinion counts; the net score's cell says its sign by its class too.
  function opinions(rows, first, caption) {
    const heading = (c) => c === "label" ? el("th", { scope: "col" }, first) : el("th", { scope: "col", title: HEADINGS[c][1] }, HEADINGS[c][0]);
    const head = el("tr", {}, ...COLUMNS.map(heading));
    const body = rows.map((r) => {
      const n = Number(r.net_score);
      const net = el("td", { class: n > 0 ? "net-positive" : n < 0 ? "net-negative" : "net-neutral" }, signed(r.net_score));
      return el("tr", {}, el("td", {}, r.label), el("td", {}, r.positive), el("td", {}, r.neutral), el("td", {}, r.negative), net);
    });
    return el("table", { class: "sentiment" }, el("caption", {}, caption), el("thead", {}, head), el("tbody", {}, ...body));
  }

  // The customer page's panel: what this customer liked and disliked.
  function panel(c) {
    const brands = c.sentiment_by_brand || [];
    const categories = c.sentiment_by_category || [];
    const box = el("section", { id: "customer-sentiment", class: "panel", "aria-labelledby": "customer-sentiment-title" },
      el("h4", { id: "customer-sentiment-title" }, "Sentiment"));
    if (!brands.length && !categories.length) {
      box.append(el("p", { class: "muted" }, "No likes, dislikes or rated tickets about a brand or category."));
      return [box];
    }
    if (brands.length) box.append(el("div", { class: "table-wrap" }, opinions(brands, "brand", "Opinions per brand (likes, dislikes, tickets)")));
    if (categories.length) box.append(el("div", { class: "table-wrap" }, opinions(categories, "category", "Opinions per category")));
    return [box];
  }

  async function load() {
    const target = document.getElementById("sentiment-tables");
    const period = document.getElementById("sentiment-period");
    const weeks = document.getElementById("sentiment-weeks").value;
    try {
      const response = await api(`/api/reports/sentiment?weeks=${encodeURIComponent(weeks)}`);
      if (!response.ok) throw new Error(response.status === 403 ? "not allowed for this role" : "error " + response.status);
      const data = await response.json();
      period.textContent = `${data.since} to ${data.as_of}. Net score: (positive − negative) / all opinions, from −100 to +100.`;
      const over = (d) => data.rows.filter((r) => r.dimension === d && r.week === "all").sort((a, b) => b.total - a.total || a.label.localeCompare(b.label));
      const weekly = data.rows.filter((r) => r.week !== "all").map((r) => Object.assign({}, r, { net_score: signed(r.net_score) }));
      if (!data.rows.length) {
        target.replaceChildren(el("p", { class: "muted" }, "No opinions in this period."));
        return;
      }
      target.replaceChildren(
        el("h3", {}, "Brands"), el("div", { class: "table-wrap" }, opinions(over("brand"), "brand", "Over the period, most opinions first")),
        el("h3", {}, "Categories"), el("div", { class: "table-wrap" }, opinions(over("category"), "category", "Over the period, most opinions first")),
        el("details", {}, el("summary", {}, "Week by week"),
          el("div", { class: "table-wrap" }, table(["dimension", "label", "week", "positive", "neutral", "negative", "net_score"], weekly, "Per ISO week"))),
      );
    } catch (error) { target.textContent = error.message; }
  }

  document.getElementById("sentiment-weeks").addEventListener("change", load);
  window.crmSentiment = { panel, load };
})();
