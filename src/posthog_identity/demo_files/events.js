function esc(s){return String(s).replace(/[&<>"']/g,function(c){return "&#"+c.charCodeAt(0)+";"});}
function row(cells,tag){return "<tr>"+cells.map(function(c){return "<"+tag+">"+esc(c)+"</"+tag+">"}).join("")+"</tr>";}
function refresh(){fetch("/events.json").then(function(r){return r.json()}).then(function(d){
  document.getElementById("cookie").textContent=JSON.stringify(d.cookie,null,2);
  document.getElementById("transitions").innerHTML=row(["time","transition","anonymous id","user","link"],"th")+
    d.transitions.map(function(t){return row([t.time,t.transition,t.anonymous_id,t.user_id,t.link],"td")}).join("");
  var html=d.sink?"":"<p>Events go to PostHog, not to a local sink.</p>";
  Object.keys(d.groups).forEach(function(id){html+="<h3>"+esc(id)+"</h3><table>"+row(["time","event","from","linked id"],"th")+
    d.groups[id].map(function(e){return row([e.time,e.event,e.source,e.alias],"td")}).join("")+"</table>";});
  document.getElementById("groups").innerHTML=html||"<p>No events yet.</p>";});}
refresh();setInterval(refresh,1000);
